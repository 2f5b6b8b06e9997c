// tlogcheck verifies a krepis tlog export with Go's own transparency-log code
// (golang.org/x/mod/sumdb/tlog and sumdb/note, as the Go checksum database uses them):
// an implementation independent of krepis.
//
//	tlogcheck DIR VERIFIER_KEY [OLD_DIR]
//	tlogcheck sign SIGNER_KEY... < TEXT
//
// DIR (and OLD_DIR) may be an http:// URL instead: the tree is then read over HTTP, as a
// client of a tile server (krepis tlog serve) reads it.
// It opens DIR/checkpoint with the verifier key, reads the hash tiles through
// tlog.TileHashReader (which authenticates every tile against the signed tree head),
// recomputes the tree head, checks an inclusion proof for every entry of every entry
// bundle, and, given OLD_DIR, a consistency proof from the older checkpoint. It prints
// "ok N" or exits 1 with the reason.
//
// "sign" signs the note text on stdin with each signer key (note.Sign) and prints the signed
// note: what krepis must accept from another implementation of the same spec.
package main

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "tlogcheck: "+format+"\n", args...)
	os.Exit(1)
}

func index(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}

func path(level string, n int64, w int) string {
	p := "tile/" + level + "/" + index(n)
	if w != 256 {
		p += ".p/" + strconv.Itoa(w)
	}
	return p
}

// read returns the file rel of a tree: below a directory, or below an http:// URL.
func read(base, rel string) ([]byte, error) {
	if !strings.HasPrefix(base, "http://") {
		return os.ReadFile(filepath.Join(base, rel))
	}
	client := http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(strings.TrimSuffix(base, "/") + "/" + rel)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", rel, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return 8 }

func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := read(d.dir, path(strconv.Itoa(t.L), t.N, t.W))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (d dirTiles) SaveTiles([]tlog.Tile, [][]byte) {}

func checkpoint(dir string, verifier note.Verifier) (tlog.Tree, string) {
	msg, err := read(dir, "checkpoint")
	if err != nil {
		fail("%v", err)
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		fail("%s: %v", dir, err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		fail("%s: malformed checkpoint", dir)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("%s: tree size: %v", dir, err)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("%s: root hash: %v", dir, err)
	}
	var h tlog.Hash
	copy(h[:], raw)
	return tlog.Tree{N: size, Hash: h}, lines[0]
}

func sign(keys []string) {
	text, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("%v", err)
	}
	var signers []note.Signer
	for _, k := range keys {
		s, err := note.NewSigner(strings.TrimSpace(k))
		if err != nil {
			fail("signer key: %v", err)
		}
		signers = append(signers, s)
	}
	msg, err := note.Sign(&note.Note{Text: string(text)}, signers...)
	if err != nil {
		fail("sign: %v", err)
	}
	os.Stdout.Write(msg)
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "sign" {
		sign(os.Args[2:])
		return
	}
	if len(os.Args) < 3 {
		fail("usage: tlogcheck DIR VERIFIER_KEY [OLD_DIR]")
	}
	dir := os.Args[1]
	verifier, err := note.NewVerifier(strings.TrimSpace(os.Args[2]))
	if err != nil {
		fail("verifier key: %v", err)
	}
	tree, _ := checkpoint(dir, verifier)
	hashes := tlog.TileHashReader(tree, dirTiles{dir})
	root, err := tlog.TreeHash(tree.N, hashes)
	if err != nil {
		fail("tree hash: %v", err)
	}
	if root != tree.Hash {
		fail("the tiles' tree hash %v is not the checkpoint's %v", root, tree.Hash)
	}
	var checked int64
	for b := int64(0); b*256 < tree.N; b++ {
		w := int(tree.N - b*256)
		if w > 256 {
			w = 256
		}
		data, err := read(dir, path("entries", b, w))
		if err != nil {
			fail("%v", err)
		}
		for i := 0; i < w; i++ {
			if len(data) < 2 {
				fail("entry bundle %d: entry %d cut off", b, i)
			}
			size := int(binary.BigEndian.Uint16(data))
			if len(data) < 2+size {
				fail("entry bundle %d: entry %d cut off", b, i)
			}
			record := data[2 : 2+size]
			data = data[2+size:]
			n := b*256 + int64(i)
			proof, err := tlog.ProveRecord(tree.N, n, hashes)
			if err != nil {
				fail("proof of entry %d: %v", n, err)
			}
			if err := tlog.CheckRecord(proof, tree.N, tree.Hash, n, tlog.RecordHash(record)); err != nil {
				fail("entry %d is not in the tree: %v", n, err)
			}
			checked++
		}
		if len(data) != 0 {
			fail("entry bundle %d: %d bytes after its last entry", b, len(data))
		}
	}
	if checked != tree.N {
		fail("checked %d entries, the tree has %d", checked, tree.N)
	}
	if len(os.Args) > 3 {
		old, _ := checkpoint(os.Args[3], verifier)
		proof, err := tlog.ProveTree(tree.N, old.N, hashes)
		if err != nil {
			fail("consistency proof: %v", err)
		}
		if err := tlog.CheckTree(proof, tree.N, tree.Hash, old.N, old.Hash); err != nil {
			fail("the old checkpoint is not a prefix of the new one: %v", err)
		}
	}
	fmt.Printf("ok %d\n", checked)
}
