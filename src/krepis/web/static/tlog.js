// Checking the journal's verifiable log in the browser, with WebCrypto only: C2SP signed notes
// (Ed25519; key ID = first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)), tlog
// checkpoints, RFC 6962 leaf and node hashes, inclusion and consistency proofs (RFC 9162
// §2.1.3.2 and §2.1.4.2). Nothing the server says is trusted here: roots come from a checkpoint
// whose signature verified with the key the visitor pinned. Sizes and indexes are BigInts.

const DASH = "\u2014";
const enc = new TextEncoder();

export class VerifyError extends Error {}

function fail(reason) {
  throw new VerifyError(reason);
}

export function cryptoAvailable() {
  return Boolean(window.isSecureContext && globalThis.crypto && crypto.subtle);
}

// Standard base64, in its one canonical spelling only (padded, no stray bits).
export function b64decode(text, what) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) fail(`${what} is not base64`);
  let raw;
  try {
    raw = atob(text);
  } catch {
    fail(`${what} is not base64`);
  }
  const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
  if (b64encode(bytes) !== text) fail(`${what} is not canonical base64`);
  return bytes;
}

export function b64encode(bytes) {
  let raw = "";
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw);
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export function leafHash(data) {
  return sha256(concat(Uint8Array.of(0), data));
}

export function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

function validName(name) {
  return name.length > 0 && !/[\s+]/.test(name) && ![...name].some((c) => c.charCodeAt(0) < 0x20);
}

// A verifier key: <name>+<8 hex digits key ID>+base64(0x01 || 32-byte Ed25519 public key).
export async function parseVerifierKey(text) {
  const trimmed = text.trim();
  const first = trimmed.indexOf("+");
  const second = trimmed.indexOf("+", first + 1);
  if (first < 0 || second < 0) fail("a verifier key is <name>+<key ID>+<base64 key>");
  const name = trimmed.slice(0, first);
  const idText = trimmed.slice(first + 1, second);
  if (!validName(name)) fail("the key's name must be non-empty, without spaces or '+'");
  if (!/^[0-9a-fA-F]{8}$/.test(idText)) fail("the key ID is not 8 hex digits");
  const raw = b64decode(trimmed.slice(second + 1), "the verifier key");
  if (raw.length === 33 && raw[0] === 4) fail("this is a witness's cosignature key (type 0x04), not the log's key");
  if (raw.length !== 33 || raw[0] !== 1) fail("the verifier key is not an Ed25519 key (type 0x01, 32 bytes)");
  const pub = raw.slice(1);
  const id = (await sha256(concat(enc.encode(name), Uint8Array.of(0x0a, 0x01), pub))).slice(0, 4);
  if (hex(id) !== idText.toLowerCase()) fail("the key ID does not match the key's name and public key");
  const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  return { name, id, pub, key, text: trimmed };
}

// A signed note: its text (ending in a newline), a blank line, signature lines
// "— <name> base64(key ID || signature)".
export function splitNote(note) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) fail("not a signed note (no blank line before the signatures)");
  if ([...note].some((c) => c.charCodeAt(0) < 0x20 && c !== "\n")) fail("the note holds control characters");
  const text = note.slice(0, split + 1);
  const lines = note.slice(split + 2, -1).split("\n");
  if (lines.length > 100) fail("the note carries more than 100 signatures");
  const sigs = lines.map((line) => {
    const parts = line.split(" ");
    if (parts.length !== 3 || parts[0] !== DASH || !validName(parts[1])) fail("a signature line is malformed");
    const raw = b64decode(parts[2], "a signature");
    if (raw.length < 5) fail("a signature is too short");
    return { name: parts[1], id: raw.slice(0, 4), sig: raw.slice(4) };
  });
  return { text, sigs };
}

// The checkpoint of a signed note, once the pinned key's signature over it verified and its
// origin is the key's name. Throws VerifyError with the reason otherwise.
export async function openCheckpoint(note, key) {
  const { text, sigs } = splitNote(note);
  const mine = sigs.filter((s) => s.name === key.name && equal(s.id, key.id));
  if (mine.length === 0) fail(`the checkpoint carries no signature of the pinned key ${key.name}`);
  for (const s of mine) {
    const ok = s.sig.length === 64 && await crypto.subtle.verify("Ed25519", key.key, s.sig, enc.encode(text));
    if (!ok) fail(`the signature of ${key.name} does not verify: the checkpoint was altered or not signed by it`);
  }
  const lines = text.split("\n");
  if (lines.length < 4) fail("a checkpoint has an origin, a tree size and a root hash, each on a line");
  const [origin, sizeText, rootText] = lines;
  if (origin !== key.name) fail(`the checkpoint's origin ${origin} is not the pinned key's name ${key.name}`);
  if (!/^(0|[1-9][0-9]{0,18})$/.test(sizeText) || BigInt(sizeText) > 2n ** 63n - 1n) {
    fail("the checkpoint's tree size is not a decimal number below 2^63");
  }
  const root = b64decode(rootText, "the checkpoint's root hash");
  if (root.length !== 32) fail("the checkpoint's root hash is not 32 bytes");
  return { origin, size: BigInt(sizeText), root, note };
}

// RFC 9162 §2.1.3.2: the root an audit path leads to from a leaf hash.
export async function rootFromInclusion(leaf, index, size, path) {
  if (!(index >= 0n && index < size)) fail(`leaf ${index} is not in a tree of size ${size}`);
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) fail("the inclusion proof is too long");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) fail("the inclusion proof is too short");
  return r;
}

export async function verifyInclusion(leaf, index, size, path, root) {
  return equal(await rootFromInclusion(leaf, index, size, path), root);
}

// RFC 9162 §2.1.4.2: whether the tree (old, oldRoot) is a prefix of the tree (new, newRoot).
export async function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
  if (!(oldSize >= 0n && oldSize <= newSize)) return false;
  if (oldSize === newSize) return proof.length === 0 && equal(oldRoot, newRoot);
  if (oldSize === 0n) return proof.length === 0;
  if (proof.length === 0) return false;
  const path = [...proof];
  if ((oldSize & (oldSize - 1n)) === 0n) path.unshift(oldRoot);
  let fn = oldSize - 1n;
  let sn = newSize - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return equal(fr, oldRoot) && equal(sr, newRoot) && sn === 0n;
}

export function proofPath(list, what) {
  if (!Array.isArray(list) || list.length > 64) fail(`${what} is not a list of at most 64 hashes`);
  return list.map((h) => {
    const bytes = b64decode(String(h), `a hash of ${what}`);
    if (bytes.length !== 32) fail(`a hash of ${what} is not 32 bytes`);
    return bytes;
  });
}

export { equal };
