//! C2SP signed-note with Ed25519 keys: the text, a blank line, then one
//! signature line per key, `— <key name> <base64(key ID || signature)>`.
//!
//! - Key ID: the first 4 bytes (big-endian) of
//!   `SHA-256(name || 0x0A || 0x01 || public key)`, 0x01 being the
//!   Ed25519 signature type.
//! - Verifier key (`vkey`): `<name>+<8 hex digits of the ID>+<base64(0x01 || public key)>`.
//! - Signer key (`skey`, the key file): `PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>`,
//!   the form Go's `sumdb/note` reads, so the same file works with its tools.
//!
//! Opening a note follows Go's `note.Open`: signatures by unknown keys are
//! skipped (another party may co-sign), a signature by a known key that
//! does not verify fails the note, and at least one known key must have
//! signed. That is what makes key rotation work: a note may carry the old
//! and the new key's signatures, and each verifier trusts either.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 in signed-note.
const ED25519: u8 = 0x01;
/// Most signature lines read from one note (Go's limit).
pub const MAX_SIGNATURES: usize = 100;
/// Longest note read.
pub const MAX_NOTE: usize = 64 * 1024;
const DASH: &str = "\u{2014} ";

/// Why a note or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a signed note.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A key name signed-note does not allow.
    #[error("invalid key name (1 to 128 characters, none a space, a control character or '+')")]
    KeyName,
    /// A key string that is not a key.
    #[error("malformed key: {0}")]
    Key(&'static str),
    /// No trusted key signed it.
    #[error("no trusted key signed the note")]
    Untrusted,
    /// A trusted key's signature does not verify.
    #[error("the signature of trusted key {0:?} does not verify")]
    BadSignature(String),
}

/// `SHA-256(name || "\n" || 0x01 || public key)[..4]`, big-endian.
pub fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Whether `name` may name a key (and so a log's origin): 1 to 128
/// characters, no `+`, whitespace or control character.
pub fn check_name(name: &str) -> Result<(), NoteError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(|c| c == '+' || c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err(NoteError::KeyName) }
}

/// A key that signs notes.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner").field("name", &self.name).field("id", &format_args!("{:08x}", self.id)).finish()
    }
}

impl NoteSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        Ok(NoteSigner { name: name.to_string(), id: key_id(name, key.verifying_key().as_bytes()), key })
    }

    /// A new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| NoteError::Key("the system's random source failed"))?;
        NoteSigner::from_seed(name, seed)
    }

    /// Reads the `PRIVATE+KEY+…` form.
    pub fn from_skey(skey: &str) -> Result<NoteSigner, NoteError> {
        let rest = skey.trim_end().strip_prefix("PRIVATE+KEY+").ok_or(NoteError::Key("no PRIVATE+KEY+ prefix"))?;
        let (name, id, key) = split_key(rest)?;
        let key = B64.decode(key).map_err(|_| NoteError::Key("the key is not base64"))?;
        let seed: [u8; 32] = match key.split_first() {
            Some((&ED25519, seed)) => seed.try_into().map_err(|_| NoteError::Key("not a 32-byte Ed25519 seed"))?,
            _ => return Err(NoteError::Key("not an Ed25519 key")),
        };
        let signer = NoteSigner::from_seed(name, seed)?;
        if signer.id != id {
            return Err(NoteError::Key("the key ID does not match the key"));
        }
        Ok(signer)
    }

    /// The `PRIVATE+KEY+…` form (what the key file holds).
    pub fn to_skey(&self) -> String {
        let mut key = vec![ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.id, B64.encode(&key))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who can check this key's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }

    /// The signature line for `text`.
    fn signature_line(&self, text: &str) -> String {
        let mut sig = self.id.to_be_bytes().to_vec();
        sig.extend_from_slice(&self.key.sign(text.as_bytes()).to_bytes());
        format!("{DASH}{} {}\n", self.name, B64.encode(&sig))
    }
}

/// A key that checks notes: the public half, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads the `vkey` form, `name+id+base64(0x01 || key)`.
    pub fn from_vkey(vkey: &str) -> Result<NoteVerifier, NoteError> {
        let (name, id, key) = split_key(vkey.trim())?;
        check_name(name)?;
        let key = B64.decode(key).map_err(|_| NoteError::Key("the key is not base64"))?;
        let public: [u8; 32] = match key.split_first() {
            Some((&ED25519, public)) => public.try_into().map_err(|_| NoteError::Key("not a 32-byte Ed25519 key"))?,
            _ => return Err(NoteError::Key("not an Ed25519 key")),
        };
        if key_id(name, &public) != id {
            return Err(NoteError::Key("the key ID does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError::Key("not a valid Ed25519 point"))?;
        Ok(NoteVerifier { name: name.to_string(), id, key })
    }

    /// The `vkey` form, which auditors pin.
    pub fn to_vkey(&self) -> String {
        let mut key = vec![ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(&key))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn id(&self) -> u32 {
        self.id
    }
}

fn split_key(text: &str) -> Result<(&str, u32, &str), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::Key("expected name+id+key"));
    };
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(NoteError::Key("the key ID is not 8 lowercase hex digits"));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::Key("bad key ID"))?;
    Ok((name, id, key))
}

/// Whether `text` may be a note's text: non-empty, ends in a newline, no
/// control characters but newlines, no blank line that would end it early.
fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::Malformed("the text must be non-empty lines, each ending in a newline"));
    }
    if text.chars().any(|c| c != '\n' && c.is_control()) {
        return Err(NoteError::Malformed("the text holds a control character"));
    }
    Ok(())
}

/// Signs `text` with every signer, in order: the note.
pub fn sign(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    check_text(text)?;
    if signers.is_empty() {
        return Err(NoteError::Key("no signing key"));
    }
    let mut note = format!("{text}\n");
    for signer in signers {
        note.push_str(&signer.signature_line(text));
    }
    Ok(note)
}

/// One signature line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key ID.
    pub id: u32,
    /// The signature bytes (64 for Ed25519).
    pub signature: Vec<u8>,
}

/// A note split into its text and signatures, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// The signature lines.
    pub signatures: Vec<NoteSignature>,
}

/// Splits a note; checks its shape, not its signatures.
pub fn parse(note: &str) -> Result<Note, NoteError> {
    if note.len() > MAX_NOTE {
        return Err(NoteError::Malformed("longer than 64 KiB"));
    }
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    check_text(text)?;
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("no signature lines"));
    }
    let mut signatures = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        if signatures.len() == MAX_SIGNATURES {
            return Err(NoteError::Malformed("more than 100 signatures"));
        }
        let rest = line.strip_prefix(DASH).ok_or(NoteError::Malformed("a signature line does not start with '— '"))?;
        let (name, sig) = rest.split_once(' ').ok_or(NoteError::Malformed("a signature line has no key"))?;
        check_name(name).map_err(|_| NoteError::Malformed("a signature line has an invalid key name"))?;
        let sig = B64.decode(sig).map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if sig.len() < 5 {
            return Err(NoteError::Malformed("a signature is too short"));
        }
        let id = u32::from_be_bytes([sig[0], sig[1], sig[2], sig[3]]);
        signatures.push(NoteSignature { name: name.to_string(), id, signature: sig[4..].to_vec() });
    }
    Ok(Note { text: text.to_string(), signatures })
}

/// Parses `note` and checks it against `trusted`: the text, and the
/// trusted keys that signed it.
pub fn open<'a>(note: &str, trusted: &'a [NoteVerifier]) -> Result<(String, Vec<&'a NoteVerifier>), NoteError> {
    let parsed = parse(note)?;
    let mut signed_by = Vec::new();
    for sig in &parsed.signatures {
        let Some(key) = trusted.iter().find(|k| k.name == sig.name && k.id == sig.id) else { continue };
        let ok = <[u8; 64]>::try_from(sig.signature.as_slice())
            .ok()
            .is_some_and(|s| key.key.verify_strict(parsed.text.as_bytes(), &Signature::from_bytes(&s)).is_ok());
        if !ok {
            return Err(NoteError::BadSignature(crate::guest_text::escape(&key.name, crate::guest_text::SHORT)));
        }
        if !signed_by.contains(&key) {
            signed_by.push(key);
        }
    }
    if signed_by.is_empty() {
        return Err(NoteError::Untrusted);
    }
    Ok((parsed.text, signed_by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_ids_follow_the_spec() {
        let signer = NoteSigner::from_seed("audit.example/log", [9; 32]).unwrap();
        let again = NoteSigner::from_skey(&signer.to_skey()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let vkey = signer.verifier().to_vkey();
        assert_eq!(NoteVerifier::from_vkey(&vkey).unwrap(), signer.verifier());
        // The ID, computed here from its definition.
        let public = signer.verifier().key.to_bytes();
        let digest = Sha256::digest([b"audit.example/log\n\x01".as_slice(), &public].concat());
        assert_eq!(vkey.split('+').nth(1).unwrap(), hex::encode(&digest[..4]));
        // A vkey with the wrong ID or name is refused.
        let wrong_id = vkey.replacen(&hex::encode(&digest[..4]), "00000000", 1);
        assert!(NoteVerifier::from_vkey(&wrong_id).is_err());
        assert!(NoteVerifier::from_vkey(&vkey.replacen("audit", "audjt", 1)).is_err());
        assert!(NoteSigner::from_seed("bad name", [1; 32]).is_err());
        assert!(NoteSigner::from_seed("a+b", [1; 32]).is_err());
    }

    #[test]
    fn notes_verify_with_any_trusted_key_and_fail_otherwise() {
        let old = NoteSigner::from_seed("log", [1; 32]).unwrap();
        let new = NoteSigner::from_seed("log-2027", [2; 32]).unwrap();
        let other = NoteSigner::from_seed("log", [3; 32]).unwrap();
        let note = sign("origin\n5\nabc=\n", &[&old, &new]).unwrap();
        assert_eq!(note.matches('\u{2014}').count(), 2);
        // Rotation: either key alone is enough.
        for trusted in [vec![old.verifier()], vec![new.verifier()], vec![old.verifier(), new.verifier()]] {
            let (text, by) = open(&note, &trusted).unwrap();
            assert_eq!(text, "origin\n5\nabc=\n");
            assert_eq!(by.len(), trusted.len());
        }
        assert_eq!(open(&note, &[other.verifier()]), Err(NoteError::Untrusted));
        // An edited text fails every trusted signature.
        let edited = note.replacen("\n5\n", "\n6\n", 1);
        assert!(matches!(open(&edited, &[old.verifier()]), Err(NoteError::BadSignature(_))));
        // A signature line added by another key with the same name: skipped
        // when untrusted, refused when it claims a trusted key's ID.
        let forged = sign("origin\n5\nabc=\n", &[&other]).unwrap();
        assert_eq!(open(&forged, &[old.verifier()]), Err(NoteError::Untrusted));
        assert!(parse("no signatures\n").is_err());
        assert!(sign("two\n\nblank\n", &[&old]).is_err());
        assert!(sign("no newline", &[&old]).is_err());
    }
}
