//! The search index is derived from storage: it catches up by itself after
//! `kill -9`, after its folder is deleted, after a database of an earlier
//! release (messages only) is upgraded, and when the index is of an
//! earlier layout (it is rebuilt); a deleted message never
//! shows, even before the index has caught up.

use crate::support::*;
use serde_json::{json, Value};
use std::{
    thread,
    time::{Duration, Instant},
};

/// Searches until `want(seqs)` holds (the index may lag by up to a poll)
/// and returns the seqs found.
fn search_until(c: &mut Client, query: &str, want: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.call(json!({"type": "search", "query": query, "limit": 50}));
        assert_eq!(ty(&r), "search_results", "{r}");
        let found = seqs(r["messages"].as_array().expect("messages"));
        if want(&found) {
            return found;
        }
        assert!(Instant::now() < deadline, "search {query:?} still gives {found:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn send_all(c: &mut Client, room: &str, texts: &[String]) -> Vec<u64> {
    texts.iter().map(|t| c.send_msg(room, t)["seq"].as_u64().expect("seq")).collect()
}

#[test]
fn the_index_catches_up_after_kill9_and_after_it_is_lost() {
    let mut s = Server::open(&[]);
    let mut a = s.client("alice");
    a.join("r");
    let first: Vec<String> = (0..20).map(|i| format!("walrus number{i}")).collect();
    let acked = send_all(&mut a, "r", &first);
    // Killed right after the acks: the index may not have committed them.
    s.kill9();
    s.restart();
    let mut a = s.client("alice");
    let found = search_until(&mut a, "walrus", |f| f.len() == acked.len());
    assert_eq!(found, acked.iter().rev().copied().collect::<Vec<_>>(), "newest first");

    // The index folder lost: rebuilt from storage at the next start.
    s.kill9();
    std::fs::remove_dir_all(s.dir.join("search")).expect("remove the index");
    s.restart();
    let mut a = s.client("alice");
    let found = search_until(&mut a, "number1", |f| f.len() == 11);
    assert!(found.iter().all(|s| acked.contains(s)), "{found:?}");
}

/// The index as the release before 2026-12-04 laid it out (an id term
/// and stored fields per message), its marks saying room `r` is indexed
/// up to `upto`, but with no documents.
fn write_index_of_the_earlier_schema(dir: &std::path::Path, upto: u64) {
    use tantivy::schema::{Schema, FAST, INDEXED, STORED, STRING, TEXT};
    let mut b = Schema::builder();
    b.add_text_field("id", STRING);
    b.add_text_field("room", STRING | STORED);
    b.add_u64_field("seq", STORED);
    b.add_u64_field("ts", INDEXED | FAST | STORED);
    b.add_text_field("text", TEXT);
    std::fs::create_dir_all(dir).expect("index dir");
    let index = tantivy::Index::create_in_dir(dir, b.build()).expect("old index");
    let mut writer: tantivy::IndexWriter = index.writer(15_000_000).expect("writer");
    let mut commit = writer.prepare_commit().expect("prepare");
    commit.set_payload(&json!({ "r": upto }).to_string());
    commit.commit().expect("commit");
}

#[test]
fn an_index_of_an_earlier_layout_is_rebuilt_from_storage() {
    let mut s = Server::open(&[]);
    let mut a = s.client("alice");
    a.join("r");
    let texts: Vec<String> = (0..5).map(|i| format!("narwhal tusk{i}")).collect();
    let acked = send_all(&mut a, "r", &texts);
    search_until(&mut a, "narwhal", |f| f.len() == acked.len());
    // An index whose marks claim everything is done, in the earlier
    // layout: kept, it would find nothing; rebuilt, it finds every one.
    s.kill9();
    let dir = s.dir.join("search");
    std::fs::remove_dir_all(&dir).expect("remove the index");
    write_index_of_the_earlier_schema(&dir, *acked.last().expect("acked"));
    s.restart();
    let mut a = s.client("alice");
    let found = search_until(&mut a, "narwhal", |f| f.len() == acked.len());
    assert_eq!(found, acked.iter().rev().copied().collect::<Vec<_>>(), "newest first");
    let found = search_until(&mut a, "tusk3", |f| !f.is_empty());
    assert_eq!(found, [acked[3]]);
}

#[test]
fn a_deleted_or_edited_message_never_shows_stale() {
    let s = Server::open(&[]);
    let mut a = s.client("alice");
    a.join("r");
    let seq = a.send_msg("r", "platypus rendezvous")["seq"].clone();
    search_until(&mut a, "platyp rendez", |f| f.len() == 1);
    // Right after the acks, before the index could see them, the old text
    // must not match any more.
    let ack = a.call(json!({"type": "edit", "room": "r", "seq": seq, "text": "echidna"}));
    assert_eq!(ty(&ack), "ack", "{ack}");
    let r = a.call(json!({"type": "search", "query": "platypus"}));
    assert_eq!(r["messages"], json!([]), "{r}");
    search_until(&mut a, "ECHID", |f| f == [seq.as_u64().unwrap()]);
    // An edit back to an old word: the message's earlier entries are gone
    // from the index, so it is found once, not once per version.
    let ack = a.call(json!({"type": "edit", "room": "r", "seq": seq, "text": "echidna platypus"}));
    assert_eq!(ty(&ack), "ack", "{ack}");
    search_until(&mut a, "echid platyp", |f| !f.is_empty());
    for q in ["platyp", "echidna"] {
        let r = a.call(json!({"type": "search", "query": q}));
        assert_eq!(
            seqs(r["messages"].as_array().expect("messages")),
            [seq.as_u64().unwrap()],
            "{r}"
        );
    }
    let ack = a.call(json!({"type": "delete", "room": "r", "seq": seq}));
    assert_eq!(ty(&ack), "ack", "{ack}");
    let r = a.call(json!({"type": "search", "query": "echidna"}));
    assert_eq!(r["messages"], json!([]), "{r}");
    // The text is gone from history too, edits included.
    let h = a.call(json!({"type": "history", "room": "r"}));
    let items: &Vec<Value> = h["messages"].as_array().expect("messages");
    assert!(!h.to_string().contains("echidna") && !h.to_string().contains("platypus"), "{h}");
    assert_eq!(items[0]["deleted"], true, "{h}");
}

#[test]
fn a_database_of_the_first_format_is_upgraded_and_indexed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        // What revision 1 wrote: messages as (ts, from, text), memberships.
        let db = sled::open(tmp.path().join("db")).expect("sled");
        let (messages, members, user_rooms) = (
            db.open_tree("messages").unwrap(),
            db.open_tree("members").unwrap(),
            db.open_tree("user_rooms").unwrap(),
        );
        for (seq, from, text) in
            [(1u64, "bob", "old quokka"), (2, "alice", "mine"), (3, "bob", "x")]
        {
            let mut k = b"r\0".to_vec();
            k.extend_from_slice(&seq.to_be_bytes());
            let v = rmp_serde::to_vec(&(now_ms(), from, text)).unwrap();
            messages.insert(k, v).unwrap();
        }
        for u in ["alice", "bob"] {
            members.insert(format!("r\0{u}"), &[]).unwrap();
            user_rooms.insert(format!("{u}\0r"), &[]).unwrap();
        }
        db.flush().unwrap();
    }
    let mut o = Opts::new(&["--open"]);
    o.dir = Some(tmp.path().to_path_buf());
    let s = Server::start_with(o);
    let mut a = s.client("alice");
    let r = hello_room(&a.hello, "r").cloned().expect("room r in hello");
    assert_eq!((r["seq"].as_u64(), r["unread"].as_u64()), (Some(3), Some(2)), "{r}");
    let h = a.call(json!({"type": "history", "room": "r"}));
    assert_eq!(h["messages"][0]["text"], "old quokka", "{h}");
    assert_eq!(h["messages"][0]["type"], "message", "{h}");
    search_until(&mut a, "quok", |f| f == [1]);
    let d = a.call(json!({"type": "rooms"}));
    assert_eq!(
        d["rooms"],
        json!([{"room": "r", "members": 2, "seq": 3, "ts": h["messages"][2]["ts"]}])
    );
    let ack = a.call(json!({"type": "send", "room": "r", "text": "new"}));
    assert_eq!(ack["seq"], 4, "{ack}");
}
