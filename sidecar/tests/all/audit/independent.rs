//! Implementations no one here wrote accept the log's checkpoints and
//! proofs: crates.io `signed_note` and `tlog_tiles` (Cloudflare's ports
//! of Go's `sumdb/note` and `sumdb/tlog`).

use std::path::{Path, PathBuf};

use gatehouse::audit::{AuditLog, Checkpoint, NoteSigner, NoteVerifier, merkle, tiles};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Tile, TileHashReader, TileReader, tlog};

use super::{ORIGIN, change, export_lines, key, log_of};

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

/// A tiles directory as a tile client reads it: `tlog_tiles` names a tile
/// as Go's sumdb does (`tile/8/<L>/<N>`); C2SP tlog-tiles drops the
/// height (`tile/<L>/<N>`), which is all this changes.
struct TileDir(PathBuf);

impl TileReader for TileDir {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog::Error> {
        tiles
            .iter()
            .map(|tile| {
                let c2sp = tile.path().replacen("tile/8/", "tile/", 1);
                std::fs::read(self.0.join(&c2sp)).map_err(|e| tlog::Error::InvalidInput(format!("{c2sp}: {e}")))
            })
            .collect()
    }

    fn save_tiles(&self, _: &[Tile], _: &[Vec<u8>]) {}
}

/// Reads a tiles directory with `signed_note` and `tlog_tiles` alone,
/// trusting only `vkey`: the checkpoint's signature, the tree hash from
/// the hash tiles (authenticated against the checkpoint's root), and a
/// record proof from those tiles for every entry of the bundles. Returns
/// the entries, or the first thing that does not hold.
pub fn read_tiles_independently(dir: &Path, vkey: &str) -> Result<Vec<Vec<u8>>, String> {
    let verifiers = VerifierList::new(vec![Box::new(StandardVerifier::new(vkey).unwrap())]);
    let signed = std::fs::read(dir.join("checkpoint")).map_err(|e| format!("checkpoint: {e}"))?;
    let note = Note::from_bytes(&signed).map_err(|e| format!("checkpoint: {e}"))?;
    note.verify(&verifiers).map_err(|e| format!("checkpoint signature: {e}"))?;
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).map_err(|e| format!("checkpoint: {e}"))?;
    let (size, root) = (checkpoint.size(), tlog::Hash(checkpoint.hash().0));

    let reader = TileDir(dir.to_path_buf());
    let hashes = TileHashReader::new(size, root, &reader);
    let tree = tlog::tree_hash(size, &hashes).map_err(|e| format!("tree hash: {e}"))?;
    if tree != root {
        return Err("the tiles' tree is not the checkpoint's".into());
    }
    let mut entries = Vec::new();
    for n in 0..size.div_ceil(256) {
        let width = (size - n * 256).min(256);
        let bundle = Tile::new(8, 0, n, width as u32, true).path().replacen("tile/8/data/", "tile/entries/", 1);
        let bytes = std::fs::read(dir.join(&bundle)).map_err(|e| format!("{bundle}: {e}"))?;
        let mut rest = &bytes[..];
        while let [high, low, tail @ ..] = rest {
            let length = usize::from(u16::from_be_bytes([*high, *low]));
            let entry = tail.get(..length).ok_or(format!("{bundle}: an entry cut short"))?;
            entries.push(entry.to_vec());
            rest = &tail[length..];
        }
        if !rest.is_empty() || entries.len() as u64 != n * 256 + width {
            return Err(format!("{bundle}: not {width} length-prefixed entries"));
        }
    }
    for (seq, entry) in entries.iter().enumerate() {
        let proof = tlog::prove_record(size, seq as u64, &hashes).map_err(|e| format!("entry {seq}: {e}"))?;
        tlog::check_record(&proof, size, root, seq as u64, tlog::record_hash(entry))
            .map_err(|e| format!("entry {seq}: {e}"))?;
    }
    Ok(entries)
}

/// The tiles export, read by a tile client no one here wrote. 600 entries
/// in batches of 100 (two full level-0 tiles and a partial one of 88, a
/// partial level-1 tile of 2), and the export of the first 256 (exactly
/// one full tile a level, no partial). Attacks on the directory, each
/// refused by that client: a hash in a tile edited, an entry in a bundle
/// edited, a tile missing, the checkpoint signed by another key; and our
/// export refuses a directory that is not empty and a store whose entries
/// are not its checkpoint's tree.
#[test]
fn tlog_tiles_reads_our_tiles_export_and_refuses_it_edited() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("log.redb"), ORIGIN, vec![key()]).unwrap();
    let mut checkpoints = Vec::new();
    for batch in 0..6 {
        let changes: Vec<_> = (0..100).map(|i| change(batch * 100 + i)).collect();
        checkpoints.push(log.append(&changes).unwrap().checkpoint);
    }
    let entries: Vec<Vec<u8>> = export_lines(&log).into_iter().filter(|l| !l.starts_with(b"{\"checkpoint\"")).collect();
    assert_eq!(entries.len(), 600);
    let vkey = key().verifier().to_vkey();

    let out = dir.path().join("tiles");
    let written = tiles::write(&out, &entries, &checkpoints[5]).unwrap();
    assert_eq!(written.size, 600);
    let mut paths: Vec<&str> = written.files.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "checkpoint",
            "tile/0/000",
            "tile/0/001",
            "tile/0/002.p/88",
            "tile/1/000.p/2",
            "tile/entries/000",
            "tile/entries/001",
            "tile/entries/002.p/88"
        ]
    );
    assert_eq!(read_tiles_independently(&out, &vkey).unwrap(), entries);

    // Exactly 256: full tiles only. (The checkpoint of 300 is signed
    // over more than 256 entries, so a tree of 256 comes from a log of
    // its own.)
    let small = AuditLog::open(&dir.path().join("small.redb"), ORIGIN, vec![key()]).unwrap();
    let note = small.append(&(0..256).map(change).collect::<Vec<_>>()).unwrap().checkpoint;
    let small_entries: Vec<Vec<u8>> =
        export_lines(&small).into_iter().filter(|l| !l.starts_with(b"{\"checkpoint\"")).collect();
    let full = dir.path().join("full");
    let written = tiles::write(&full, &small_entries, &note).unwrap();
    let mut paths: Vec<&str> = written.files.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["checkpoint", "tile/0/000", "tile/1/000.p/1", "tile/entries/000"]);
    assert_eq!(read_tiles_independently(&full, &vkey).unwrap(), small_entries);

    // Entries past the latest checkpoint are left out; a checkpoint of a
    // tree the entries do not give is refused.
    assert_eq!(tiles::tiles(&entries, &checkpoints[2]).unwrap().size, 300);
    let mut forked = entries.clone();
    forked[7][20] ^= 1;
    let error = tiles::tiles(&forked, &checkpoints[5]).unwrap_err();
    assert!(matches!(error, tiles::TilesError::Mismatch(_)), "{error}");
    let error = tiles::tiles(&entries[..599], &checkpoints[5]).unwrap_err();
    assert!(error.to_string().contains("signs 600 entries, the store holds 599"), "{error}");
    // A directory that is not empty is refused, and left as it was.
    let error = tiles::write(&out, &entries, &checkpoints[5]).unwrap_err();
    assert!(matches!(error, tiles::TilesError::NotEmpty(_)), "{error}");

    // Each edit, on a copy, refused by the client.
    type Edit = fn(&Path);
    let attacks: [(&str, Edit); 4] = [
        ("a hash in a level-0 tile", |d| flip(&d.join("tile/0/001"), 40)),
        ("an entry in a bundle", |d| flip(&d.join("tile/entries/002.p/88"), 30)),
        ("a tile missing", |d| std::fs::remove_file(d.join("tile/1/000.p/2")).unwrap()),
        ("the checkpoint re-signed by another key", |d| {
            let text = std::fs::read_to_string(d.join("checkpoint")).unwrap();
            let body = &text[..text.find("\n\n").unwrap() + 1];
            let forged = Checkpoint::from_text(body).unwrap().sign(&[&super::attacker_key()]).unwrap();
            std::fs::write(d.join("checkpoint"), forged).unwrap();
        }),
    ];
    for (i, (attack, edit)) in attacks.into_iter().enumerate() {
        let copy = dir.path().join(format!("copy-{i}"));
        tiles::write(&copy, &entries, &checkpoints[5]).unwrap();
        edit(&copy);
        let refused = read_tiles_independently(&copy, &vkey);
        assert!(refused.is_err(), "{attack}: accepted");
    }
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 1;
    std::fs::write(path, bytes).unwrap();
}
