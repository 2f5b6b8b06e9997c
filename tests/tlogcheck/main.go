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
//
//	tlogcheck cosig LOG_VKEY WITNESS_VKEY... < NOTE
//	tlogcheck cosign WITNESS_SKEY TIMESTAMP < TEXT
//
// "cosig" opens the signed checkpoint on stdin with note.Open, given the log's verifier key and
// one cosignature/v1 verifier per witness key written here from c2sp.org/tlog-cosignature with
// Go's crypto/ed25519 (key ID over type 0x04, the signature over "cosignature/v1\ntime T\n" and
// the note text, T a big-endian u64 before it); it fails unless the log's signature and every
// witness's cosignature verify, and prints "ok SIZE" and one "WITNESS TIMESTAMP" line each.
// "cosign" prints the cosignature line of the note text on stdin at TIMESTAMP.
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"math"
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

// cosigVerifier checks cosignature/v1 Ed25519 cosignatures (c2sp.org/tlog-cosignature).
type cosigVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func (v cosigVerifier) Name() string    { return v.name }
func (v cosigVerifier) KeyHash() uint32 { return v.hash }
func (v cosigVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > math.MaxInt64 {
		return false
	}
	return ed25519.Verify(v.key, cosigMessage(t, msg), sig[8:])
}

func cosigMessage(t uint64, text []byte) []byte {
	return append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), text...)
}

func keyHash(name string, key []byte) uint32 {
	h := sha256.Sum256(append([]byte(name+"\n"), key...))
	return binary.BigEndian.Uint32(h[:4])
}

// cosigKey reads name+hash+base64(0x04 || key) (with prefix "PRIVATE+KEY+" for a signer key).
func cosigKey(text string, private bool) (string, uint32, []byte) {
	text = strings.TrimSpace(text)
	if private {
		if !strings.HasPrefix(text, "PRIVATE+KEY+") {
			fail("not a signer key")
		}
		text = text[len("PRIVATE+KEY+"):]
	}
	parts := strings.SplitN(text, "+", 3)
	if len(parts) != 3 {
		fail("malformed witness key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 33 || raw[0] != 0x04 {
		fail("not an Ed25519 cosignature key (type 0x04)")
	}
	hash, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil {
		fail("malformed key hash")
	}
	pub := raw
	if private {
		pub = append([]byte{0x04}, ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)...)
	}
	if uint32(hash) != keyHash(parts[0], pub) {
		fail("the key hash does not match the key")
	}
	return parts[0], uint32(hash), raw[1:]
}

func cosig(logKey string, witnessKeys []string) {
	msg, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("%v", err)
	}
	log, err := note.NewVerifier(strings.TrimSpace(logKey))
	if err != nil {
		fail("log key: %v", err)
	}
	verifiers := []note.Verifier{log}
	for _, k := range witnessKeys {
		name, hash, key := cosigKey(k, false)
		verifiers = append(verifiers, cosigVerifier{name, hash, ed25519.PublicKey(key)})
	}
	n, err := note.Open(msg, note.VerifierList(verifiers...))
	if err != nil {
		fail("%v", err)
	}
	found := map[string]note.Signature{}
	for _, s := range n.Sigs {
		found[s.Name] = s
	}
	if _, ok := found[log.Name()]; !ok {
		fail("the log's signature is missing")
	}
	lines := strings.Split(n.Text, "\n")
	fmt.Printf("ok %s\n", lines[1])
	for _, v := range verifiers[1:] {
		s, ok := found[v.Name()]
		if !ok || s.Hash != v.KeyHash() {
			fail("no cosignature of %s", v.Name())
		}
		raw, _ := base64.StdEncoding.DecodeString(s.Base64)
		fmt.Printf("%s %d\n", v.Name(), binary.BigEndian.Uint64(raw[4:12]))
	}
}

func cosign(skey string, timestamp string) {
	text, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("%v", err)
	}
	name, hash, seed := cosigKey(skey, true)
	t, err := strconv.ParseUint(timestamp, 10, 63)
	if err != nil {
		fail("timestamp: %v", err)
	}
	sig := make([]byte, 4, 4+8+ed25519.SignatureSize)
	binary.BigEndian.PutUint32(sig, hash)
	sig = binary.BigEndian.AppendUint64(sig, t)
	sig = append(sig, ed25519.Sign(ed25519.NewKeyFromSeed(seed), cosigMessage(t, text))...)
	fmt.Printf("\u2014 %s %s\n", name, base64.StdEncoding.EncodeToString(sig))
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "sign" {
		sign(os.Args[2:])
		return
	}
	if len(os.Args) > 3 && os.Args[1] == "cosig" {
		cosig(os.Args[2], os.Args[3:])
		return
	}
	if len(os.Args) == 4 && os.Args[1] == "cosign" {
		cosign(os.Args[2], os.Args[3])
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
