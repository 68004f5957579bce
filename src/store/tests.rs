//! The store against in-memory and temporary databases.

use super::*;
use chrono::TimeZone;
use migrations::MIGRATIONS;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 123_456_789)
        .unwrap()
}

fn session(store: &Store, name: &str, created: i64) -> SessionRecord {
    let rec = SessionRecord {
        id: Uuid::new_v4(),
        name: Some(name.to_owned()),
        creator: "alice".to_owned(),
        created: t(created),
    };
    store.insert_session(&rec).unwrap();
    rec
}

fn msg(session: Uuid, seq: u64) -> StoredMessage {
    StoredMessage {
        session,
        seq,
        time: t(seq as i64),
        sender: "alice".to_owned(),
        text: format!("message {seq}"),
        client_id: seq.is_multiple_of(2).then_some(u64::MAX - seq),
    }
}

fn seqs(msgs: &[StoredMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

#[test]
fn migrations_are_idempotent_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/confab.db");
    let v1 = {
        let store = Store::open(&path).unwrap();
        store.create_user("alice", "hash", t(0)).unwrap();
        store.schema_version()
    };
    assert_eq!(v1, MIGRATIONS.len() as u32);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version(), v1);
    // Data survived and the tables were not recreated.
    assert!(store.user("alice").unwrap().is_some());
}

#[test]
fn from_connection_migrates_and_rerunning_migrate_is_noop() {
    let mut conn = Connection::open_in_memory().unwrap();
    migrate(&mut conn).unwrap();
    migrate(&mut conn).unwrap();
    let store = Store::from_connection(conn).unwrap();
    assert_eq!(store.schema_version(), MIGRATIONS.len() as u32);
}

#[test]
fn newer_schema_is_refused() {
    let conn = Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    assert!(matches!(
        Store::from_connection(conn),
        Err(StoreError::TooNew { found: 999, .. })
    ));
}

#[test]
fn user_names_are_unique_ignoring_case() {
    let store = Store::open_in_memory().unwrap();
    let created = store.create_user("Alice", "$argon2id$x", t(5)).unwrap();
    assert_eq!(created.name, "Alice");
    assert!(matches!(
        store.create_user("aLICE", "other", t(6)),
        Err(StoreError::NameTaken)
    ));
    let found = store.user("ALICE").unwrap().unwrap();
    assert_eq!(found, created);
    assert!(store.user("bob").unwrap().is_none());
    let bob = store.create_user("bob", "h", t(7)).unwrap();
    assert_ne!(bob.id, created.id);
}

#[test]
fn token_secret_is_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    let first = Store::open(&path).unwrap().token_secret().unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.token_secret().unwrap(), first);
    assert_eq!(store.token_secret().unwrap(), first);
    assert_ne!(first, [0u8; 32]);
    // A different database gets a different secret.
    let other = Store::open_in_memory().unwrap().token_secret().unwrap();
    assert_ne!(other, first);
}

#[test]
fn the_identity_key_is_its_own_and_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    let store = Store::open(&path).unwrap();
    let first = store.identity_secret().unwrap();
    assert_ne!(first, store.token_secret().unwrap());
    drop(store);
    assert_eq!(
        Store::open(&path).unwrap().identity_secret().unwrap(),
        first
    );
    let fresh = Store::open_in_memory().unwrap().identity_secret().unwrap();
    assert_ne!(fresh, first);
}

#[test]
fn sessions_unique_ordered_and_deletable() {
    let store = Store::open_in_memory().unwrap();
    let b = session(&store, "Later", 10);
    let a = session(&store, "general", 1);
    let dup = SessionRecord {
        id: Uuid::new_v4(),
        name: Some("GENERAL".to_owned()),
        creator: "bob".to_owned(),
        created: t(20),
    };
    assert!(matches!(
        store.insert_session(&dup),
        Err(StoreError::NameTaken)
    ));
    assert_eq!(store.sessions().unwrap(), vec![a.clone(), b.clone()]);
    assert!(store.delete_session(a.id).unwrap());
    assert!(!store.delete_session(a.id).unwrap());
    assert_eq!(store.sessions().unwrap(), vec![b]);
    // The name is free again.
    store.insert_session(&dup).unwrap();
}

#[test]
fn delete_session_removes_messages_via_cascade() {
    let store = Store::open_in_memory().unwrap();
    let s = session(&store, "s", 0);
    let keep = session(&store, "keep", 0);
    store
        .append_messages(&[msg(s.id, 1), msg(s.id, 2), msg(keep.id, 1)], None)
        .unwrap();
    // Exercise the foreign-key cascade on its own.
    store
        .conn
        .execute("DELETE FROM sessions WHERE id = ?1", [s.id.to_string()])
        .unwrap();
    let left: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1);
    // And through the API.
    assert!(store.delete_session(keep.id).unwrap());
    assert_eq!(store.last_seq(keep.id).unwrap(), 0);
    assert!(store.history(keep.id, None, 10).unwrap().is_empty());
}

#[test]
fn duplicate_seq_is_ignored() {
    let store = Store::open_in_memory().unwrap();
    let s = session(&store, "s", 0);
    store
        .append_messages(&[msg(s.id, 1), msg(s.id, 2)], None)
        .unwrap();
    let mut changed = msg(s.id, 2);
    changed.text = "retry".to_owned();
    store
        .append_messages(&[changed, msg(s.id, 3), msg(s.id, 3)], None)
        .unwrap();
    let all = store.history(s.id, None, 100).unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3]);
    assert_eq!(all[1], msg(s.id, 2), "first write wins");
}

#[test]
fn messages_for_unknown_session_are_skipped() {
    let store = Store::open_in_memory().unwrap();
    let s = session(&store, "s", 0);
    let ghost = Uuid::new_v4();
    store
        .append_messages(&[msg(s.id, 1), msg(ghost, 1), msg(s.id, 2)], None)
        .unwrap();
    assert_eq!(store.last_seq(s.id).unwrap(), 2);
    assert_eq!(store.last_seq(ghost).unwrap(), 0);
}

#[test]
fn history_windows_and_ordering() {
    let store = Store::open_in_memory().unwrap();
    let s = session(&store, "s", 0);
    let other = session(&store, "other", 0);
    // Insert out of order to make sure ordering comes from the query.
    let batch: Vec<_> = (1..=20).rev().map(|i| msg(s.id, i)).collect();
    store.append_messages(&batch, None).unwrap();
    store.append_messages(&[msg(other.id, 99)], None).unwrap();

    assert_eq!(store.last_seq(s.id).unwrap(), 20);
    assert_eq!(
        seqs(&store.history(s.id, None, 5).unwrap()),
        vec![16, 17, 18, 19, 20]
    );
    assert_eq!(
        seqs(&store.history(s.id, Some(16), 5).unwrap()),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(seqs(&store.history(s.id, Some(3), 5).unwrap()), vec![1, 2]);
    assert!(store.history(s.id, Some(1), 5).unwrap().is_empty());
    assert!(store.history(s.id, None, 0).unwrap().is_empty());
    assert_eq!(store.history(s.id, Some(u64::MAX), 100).unwrap().len(), 20);

    assert_eq!(
        seqs(&store.messages_after(s.id, 17, 10).unwrap()),
        vec![18, 19, 20]
    );
    assert_eq!(
        seqs(&store.messages_after(s.id, 0, 3).unwrap()),
        vec![1, 2, 3]
    );
    assert!(store.messages_after(s.id, 20, 10).unwrap().is_empty());
    assert!(store.messages_after(s.id, u64::MAX, 10).unwrap().is_empty());

    // Round trip of every field, including sub-second time.
    let m = &store.messages_after(s.id, 6, 1).unwrap()[0];
    assert_eq!(*m, msg(s.id, 7));
}

#[test]
fn seq_out_of_range_is_rejected() {
    let store = Store::open_in_memory().unwrap();
    let s = session(&store, "s", 0);
    assert!(matches!(
        store.append_messages(&[msg(s.id, u64::MAX)], None),
        Err(StoreError::SeqOutOfRange(u64::MAX))
    ));
}

#[test]
fn corrupt_timestamp_is_reported() {
    let store = Store::open_in_memory().unwrap();
    store.create_user("alice", "h", t(0)).unwrap();
    store
        .conn
        .execute("UPDATE users SET created = 'yesterday'", [])
        .unwrap();
    assert!(matches!(store.user("alice"), Err(StoreError::Corrupt(_))));
}

#[test]
fn large_batch_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("big.db")).unwrap();
    let s = session(&store, "busy", 0);
    let batch: Vec<_> = (1..=10_000).map(|i| msg(s.id, i)).collect();
    store.append_messages(&batch, None).unwrap();
    assert_eq!(store.last_seq(s.id).unwrap(), 10_000);
    let tail = store.history(s.id, None, 50).unwrap();
    assert_eq!(tail.len(), 50);
    assert_eq!(tail.first().unwrap().seq, 9_951);
    assert_eq!(
        store.messages_after(s.id, 0, usize::MAX).unwrap().len(),
        10_000
    );
}
