//! Arbitrary bytes → everything that reads persisted state: `KeyedStateBackend::restore`,
//! `OperatorStateStore::restore`, `state::redistribute`, `CheckpointMetadata::from_bytes` (and
//! `restore_assignment`), `codec::open_value`. Bad bytes must give typed errors, never a panic.
//!
//! Input: `selector | param | blob #| blob #| ...`. The selector's low bits pick the reader; its
//! high bit says "seal each blob with the right magic and version" (`codec::seal`, with a
//! correct length and crc32), so the fuzzer reaches the bincode bodies behind the envelope.
//! `param` picks the backend's key-group range, which states are registered (before or after
//! the restore) and the new parallelism.
//!
//! Checked beyond "no panic":
//! * a restore that fails leaves the backend or store as it was (its snapshot is unchanged);
//! * a restore that succeeds is a fixed point after one round: snapshot → restore into a fresh
//!   backend → snapshot gives the same bytes and the same counts;
//! * `redistribute` gives exactly `new_parallelism` snapshots, each of which restores;
//! * metadata that decodes re-encodes to metadata equal to it, and `restore_assignment` gives one
//!   entry per new subtask, each with exactly its key-group range;
//! * `codec::open` of a sealed body gives the body back.
#![no_main]

#[cfg(not(madsim))]
compile_error!("run with RUSTFLAGS=\"--cfg madsim\" (cargo-fuzz ignores .cargo/config.toml)");

use floe_core::codec;
use floe_core::coordinator::{CheckpointMetadata, METADATA_FORMAT_VERSION, METADATA_MAGIC};
use floe_core::ids::{CheckpointId, SubtaskIndex};
use floe_core::key_groups::{KeyGroupRange, UPPER_BOUND_MAX_PARALLELISM};
use floe_core::state::operator_state::{OPERATOR_STATE_FORMAT_VERSION, OPERATOR_STATE_MAGIC};
use floe_core::state::snapshot::{KEY_GROUP_FORMAT_VERSION, KEY_GROUP_MAGIC};
use floe_core::state::{
    redistribute, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, OperatorStateStore,
    ReducingStateDescriptor, ValueStateDescriptor,
};
use floe_fuzz::bytes::split_blobs;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

/// The max parallelisms a backend is built with.
const MAX_PARALLELISMS: [u32; 4] = [1, 4, 16, 128];

fn max_reduce(a: &i64, b: &i64) -> i64 {
    *a.max(b)
}

/// Registers the keyed states the targets know (names match what a fuzzer may write: `v`, `l`,
/// `m`, `r`). Registration after a restore decodes restored bytes: errors are typed.
fn register_keyed(backend: &mut KeyedStateBackend) {
    let _ = backend.get_state(&ValueStateDescriptor::<u64>::new("v"));
    let _ = backend.get_list_state(&ListStateDescriptor::<String>::new("l"));
    let _ = backend.get_map_state(&MapStateDescriptor::<String, u64>::new("m"));
    let _ = backend.get_reducing_state(&ReducingStateDescriptor::<i64>::new("r", max_reduce));
}

fn register_operator(store: &mut OperatorStateStore) {
    let _ = store.list_state::<u64>("offsets");
    let _ = store.union_list_state::<String>("u");
}

/// Every non-empty key group of the backend, sealed, in order.
fn keyed_blobs(backend: &KeyedStateBackend) -> Vec<Vec<u8>> {
    let snapshot = backend.snapshot(CheckpointId(1));
    snapshot.into_key_group_bytes().expect("a restored backend snapshots").into_iter().map(|(_, b)| b).collect()
}

fn keyed(blobs: &[Vec<u8>], param: u8) {
    let max_parallelism = MAX_PARALLELISMS[usize::from(param & 3)];
    let parallelism = (1 + u32::from((param >> 2) & 3)).min(max_parallelism);
    let index = u32::from(param >> 4) % parallelism;
    let range = KeyGroupRange::for_operator_index(max_parallelism, parallelism, SubtaskIndex(index));
    let register_before = param & 0x40 != 0;
    let register_after = param & 0x80 != 0;
    let fresh = || {
        let mut b = KeyedStateBackend::new(max_parallelism, range);
        if register_before {
            register_keyed(&mut b);
        }
        b
    };

    let mut backend = fresh();
    let before = keyed_blobs(&backend);
    match backend.restore(blobs.iter().map(Vec::as_slice)) {
        Err(_) => assert_eq!(keyed_blobs(&backend), before, "a failed restore changed the backend"),
        Ok(stats) => {
            if register_after {
                register_keyed(&mut backend);
            }
            // One round makes it canonical; from then on snapshot/restore is the identity.
            let first = keyed_blobs(&backend);
            let mut second = fresh();
            let stats2 = second.restore(first.iter().map(Vec::as_slice)).expect("a snapshot restores");
            if register_after {
                register_keyed(&mut second);
            }
            assert_eq!(keyed_blobs(&second), first, "snapshot → restore → snapshot changed the bytes");
            assert_eq!(stats2.key_groups_skipped, 0, "a snapshot holds only its own key groups");
            assert!(stats2.key_groups_restored <= stats.key_groups_restored);
            assert!(stats2.timers_restored <= stats.timers_restored);
        }
    }
}

fn operator_blobs(store: &OperatorStateStore) -> Vec<u8> {
    store.snapshot().expect("a restored store snapshots")
}

fn operator(blobs: &[Vec<u8>], param: u8) {
    let register_before = param & 1 != 0;
    let register_after = param & 2 != 0;
    let fresh = || {
        let mut s = OperatorStateStore::new();
        if register_before {
            register_operator(&mut s);
        }
        s
    };
    let mut store = fresh();
    let before = operator_blobs(&store);
    match store.restore(&blobs[0]) {
        Err(_) => assert_eq!(operator_blobs(&store), before, "a failed restore changed the store"),
        Ok(()) => {
            if register_after {
                register_operator(&mut store);
            }
            let first = operator_blobs(&store);
            let mut second = fresh();
            second.restore(&first).expect("a snapshot restores");
            if register_after {
                register_operator(&mut second);
            }
            assert_eq!(operator_blobs(&second), first, "snapshot → restore → snapshot changed the bytes");
        }
    }
}

fn redistribution(blobs: &[Vec<u8>], param: u8) {
    let new_parallelism = u32::from(param % 9);
    if let Ok(out) = redistribute(blobs, new_parallelism) {
        assert_eq!(out.len(), new_parallelism as usize);
        for snapshot in &out {
            let mut store = OperatorStateStore::new();
            store.restore(snapshot).expect("a redistributed snapshot restores");
        }
    }
}

fn metadata(blobs: &[Vec<u8>], param: u8) {
    let Ok(meta) = CheckpointMetadata::from_bytes(&blobs[0]) else { return };
    let again =
        CheckpointMetadata::from_bytes(&meta.to_bytes().expect("decoded metadata encodes")).expect("re-decodes");
    assert_eq!(again, meta);
    let _ = meta.blobs();
    for (&operator, op) in &meta.operators {
        // Callers restore at a parallelism within Flink's bound: the metadata's own numbers are
        // only tried when they are (a decoded `max_parallelism` may be anything up to u32::MAX,
        // and the assignment has one entry per new subtask).
        let candidates = [1, 1 + u32::from(param % 8), op.parallelism, op.max_parallelism];
        for new_parallelism in candidates.into_iter().filter(|p| *p <= UPPER_BOUND_MAX_PARALLELISM) {
            let Ok(assignment) = meta.restore_assignment(operator, new_parallelism) else { continue };
            assert_eq!(assignment.len(), new_parallelism as usize);
            for (i, restore) in assignment.iter().enumerate() {
                assert_eq!(restore.subtask, SubtaskIndex(i as u32));
                let range = KeyGroupRange::for_operator_index(op.max_parallelism, new_parallelism, restore.subtask);
                assert_eq!(restore.key_group_range, range);
                assert!(restore.keyed.is_empty() || restore.keyed.len() == range.len() as usize);
            }
        }
    }
}

fn envelope(blobs: &[Vec<u8>], raw: &[u8]) {
    // Arbitrary bytes as a sealed value of a few types; every failure is a CodecError.
    let _ = codec::open_value::<Vec<(String, u64)>>(*b"FUZZ", 1, raw);
    let _ = codec::open_value::<BTreeMap<u32, Vec<u8>>>(*b"FUZZ", 1, raw);
    let _ = codec::open_value::<(bool, Option<i64>, char)>(*b"FUZZ", 1, raw);
    for blob in blobs {
        let sealed = codec::seal(*b"FUZZ", 1, blob);
        assert_eq!(codec::open(*b"FUZZ", 1, &sealed), Ok(blob.as_slice()));
        // A sealed blob cut anywhere, or with one byte flipped, is refused.
        if !sealed.is_empty() {
            assert!(codec::open(*b"FUZZ", 1, &sealed[..sealed.len() - 1]).is_err());
            let mut flipped = sealed.clone();
            let at = blob.len() % sealed.len();
            flipped[at] ^= 0x01;
            assert!(codec::open(*b"FUZZ", 1, &flipped).is_err(), "a flipped byte at {at} went unnoticed");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, param, rest @ ..] = data else { return };
    let selector = *selector;
    let which = selector & 0x7f;
    let (magic, version) = match which % 5 {
        0 => (KEY_GROUP_MAGIC, KEY_GROUP_FORMAT_VERSION),
        1 | 2 => (OPERATOR_STATE_MAGIC, OPERATOR_STATE_FORMAT_VERSION),
        3 => (METADATA_MAGIC, METADATA_FORMAT_VERSION),
        _ => (*b"FUZZ", 1),
    };
    let blobs: Vec<Vec<u8>> = split_blobs(rest)
        .into_iter()
        .map(|b| if selector & 0x80 != 0 { codec::seal(magic, version, b) } else { b.to_vec() })
        .collect();
    match which % 5 {
        0 => keyed(&blobs, *param),
        1 => operator(&blobs, *param),
        2 => redistribution(&blobs, *param),
        3 => metadata(&blobs, *param),
        _ => envelope(&blobs, rest),
    }
});
