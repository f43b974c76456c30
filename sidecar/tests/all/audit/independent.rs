//! Implementations no one here wrote accept the log's checkpoints and
//! proofs: crates.io `signed_note` and `tlog_tiles` (Cloudflare's ports
//! of Go's `sumdb/note` and `sumdb/tlog`).

use gatehouse::audit::{Checkpoint, NoteSigner, NoteVerifier, merkle};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::tlog;

use super::{ORIGIN, key, log_of};

#[test]
fn signed_note_and_tlog_tiles_accept_our_checkpoints_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, checkpoints) = log_of(&dir.path().join("log.redb"), 13);
    let vkey = key().verifier().to_vkey();
    let verifiers = VerifierList::new(vec![Box::new(StandardVerifier::new(&vkey).unwrap())]);
    let mut roots = vec![];
    for (i, signed) in checkpoints.iter().enumerate() {
        // The note's signature, by Go's rules.
        let note = Note::from_bytes(signed.as_bytes()).unwrap();
        let (verified, unverified) = note.verify(&verifiers).unwrap();
        assert_eq!((verified.len(), unverified.len()), (1, 0));
        // The checkpoint text, by the C2SP parser.
        let parsed = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
        assert_eq!((parsed.origin(), parsed.size()), (ORIGIN, i as u64 + 1));
        roots.push(tlog::Hash(parsed.hash().0));
    }
    // A note edited after signing is refused by it too.
    let edited = checkpoints[3].replacen("\n4\n", "\n5\n", 1);
    assert!(Note::from_bytes(edited.as_bytes()).unwrap().verify(&verifiers).is_err());

    let size = 13;
    for seq in 0..size {
        let proof = log.prove(seq).unwrap();
        let leaf = tlog::record_hash(&proof.entry);
        assert_eq!(leaf.0, merkle::leaf_hash(&proof.entry));
        let path: Vec<tlog::Hash> = proof.path.iter().map(|h| tlog::Hash(*h)).collect();
        tlog::check_record(&path, size, roots[12], seq, leaf).unwrap();
        assert!(tlog::check_record(&path, size, roots[11], seq, leaf).is_err());
    }
    for old in 1..=size {
        let proof = log.consistency(old).unwrap();
        let path: Vec<tlog::Hash> = proof.path.iter().map(|h| tlog::Hash(*h)).collect();
        tlog::check_tree(&path, size, roots[12], old, roots[old as usize - 1]).unwrap();
        if old > 1 {
            assert!(tlog::check_tree(&path, size, roots[12], old, roots[old as usize - 2]).is_err());
        }
    }
}

#[test]
fn we_accept_notes_signed_by_signed_note_and_refuse_its_other_keys() {
    let ours = NoteSigner::from_seed("rotation.test/log", [7; 32]).unwrap();
    // Go's signer key form, read by the other implementation.
    let theirs = signed_note::StandardSigner::new(&ours.to_skey()).unwrap();
    let mut note = Note::new(
        Checkpoint { origin: "rotation.test/log".into(), size: 3, root: [1; 32], grants: None }.to_text().as_bytes(),
        &[],
    )
    .unwrap();
    note.add_sigs(&[&theirs]).unwrap();
    let signed = String::from_utf8(note.to_bytes()).unwrap();
    let cp = Checkpoint::open(&signed, &[ours.verifier()]).unwrap();
    assert_eq!((cp.size, cp.root), (3, [1; 32]));
    let vkey_theirs = signed_note::new_ed25519_verifier_key("rotation.test/log", &ed25519_dalek_verifying_key(&ours));
    assert_eq!(NoteVerifier::from_vkey(&vkey_theirs).unwrap(), ours.verifier());
    let stranger = NoteSigner::from_seed("rotation.test/log", [8; 32]).unwrap();
    assert!(Checkpoint::open(&signed, &[stranger.verifier()]).is_err());
}

/// The public key of a signer, as `ed25519_dalek` holds it, read back from
/// our vkey (base64 of 0x01 || key).
fn ed25519_dalek_verifying_key(signer: &NoteSigner) -> ed25519_dalek::VerifyingKey {
    use base64::Engine;
    let vkey = signer.verifier().to_vkey();
    let raw = base64::engine::general_purpose::STANDARD.decode(vkey.rsplit('+').next().unwrap()).unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&raw[1..].try_into().unwrap()).unwrap()
}
