//! Full-text search over messages' current text (PROTOCOL.md section 3.1),
//! with tantivy. The index is derived from storage, never written on the
//! ack path: the `chinwag-search` thread follows each room's released
//! (durable) seq in the directory, reads the new events from storage and
//! re-indexes the messages they touch (a new message, an edit's target, a
//! delete's target). Each commit carries how far every room is indexed, so
//! after a crash, or with the index lost, it catches up from storage by
//! itself. Commits are costly and rare under steady traffic; until one
//! lands, what was indexed since the last is searched from memory, so a
//! message shows in search after the next poll whatever the commit rate.
//!
//! Words are runs of letters and digits, lowercased; a query word matches
//! any indexed word it is a prefix of.

use crate::{
    priority,
    rooms::Directory,
    storage::Storage,
    wire::{Cursor, Kind, Msg},
};
use parking_lot::Mutex;
use std::{
    collections::{BTreeSet, HashMap},
    ops::Bound,
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};
use tantivy::{
    collector::TopDocs,
    query::{BooleanQuery, Occur, Query, RangeQuery, RegexQuery, TermQuery, TermSetQuery},
    schema::{
        Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STRING,
    },
    tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer},
    Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

/// The tokenizer's name in the index.
const TOKENIZER: &str = "chinwag_words";
/// The indexing thread's memory budget (tantivy's minimum is 15 MB).
const WRITER_BYTES: usize = 20_000_000;
/// How often the thread looks for new events.
const POLL: Duration = Duration::from_millis(250);
/// A commit makes a segment (and tantivy merges them): a cost per commit
/// whatever its size (a new segment writer zeroes several MB of tables,
/// then the files, their fsyncs, the merges, the reader's reload): about
/// 11 ms of CPU here, which at one commit a second was 9% of the server's
/// CPU at 200 msg/s (BENCHMARKS.md, fourteenth session). So under steady
/// traffic it commits rarely, and what it indexed since the last commit
/// is searched from memory ([`Recent`]): a match shows after the next
/// poll, at any commit rate.
const COMMIT_EVERY: Duration = Duration::from_secs(30);
/// ... or once a poll finds nothing new (traffic paused: a commit then
/// costs nobody anything, and it empties the in-memory list), at most
/// this often ...
const COMMIT_QUIET: Duration = Duration::from_secs(1);
/// ... or after this many events (a catch-up, a high rate). At 10,000
/// msg/s a commit every 2,000 events took 60% more CPU for the index than
/// one a second (bench/search.rs); the writer flushes its own segments at
/// its memory budget anyway.
const COMMIT_EVENTS: u64 = 20_000;
/// Most messages kept in memory between commits (a catch-up at start
/// indexes far more before its commit; past this they show after it).
const RECENT_MAX: usize = 2 * COMMIT_EVENTS as usize;
/// Events read from storage per step.
const STEP: usize = 1000;
/// Extra hits fetched past a page, so ties on ts sort exactly.
const SLACK: usize = 64;

/// The most hits one page may fetch while widening past a tie on ts.
const MAX_FETCH: usize = 1 << 20;

/// Where a search result sorts: newest first by ts, then room, then seq.
pub type Rank = (u64, String, u64);

/// The runs of letters and digits of a text, as they are (the index's
/// tokenizer splits the same way).
fn runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty())
}

/// The words of a text: runs of letters and digits, lowercased.
pub fn words(text: &str) -> Vec<String> {
    runs(text).map(str::to_lowercase).collect()
}

/// Whether every query word is a prefix of one of `have`.
fn prefixes_all<'a>(query: &[String], have: impl Iterator<Item = &'a str> + Clone) -> bool {
    query.iter().all(|q| have.clone().any(|w| w.starts_with(q.as_str())))
}

/// Whether every query word is a prefix of a word of `text`.
pub fn matches(query: &[String], text: &str) -> bool {
    prefixes_all(query, words(text).iter().map(String::as_str))
}

#[derive(Clone, Copy, Debug)]
struct Fields {
    room: Field,
    seq: Field,
    ts: Field,
    text: Field,
}

/// The search index.
pub struct Search {
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    f: Fields,
    /// How far each room is indexed (seq), as committed.
    marks: Mutex<HashMap<String, u64>>,
    /// What was added to the writer since the last commit, which the
    /// index's reader shows only after it.
    recent: Mutex<Vec<Recent>>,
}

/// A message added to the index but not committed yet, searched in memory.
#[derive(Debug)]
struct Recent {
    rank: Rank,
    /// Its words, lowercased, each followed by a space.
    words: String,
}

impl Recent {
    fn new(m: &Msg, text: &str) -> Recent {
        // As [`words`] splits and lowercases, without a string per word
        // where there is nothing to lowercase (most chat words): this
        // runs for every message indexed.
        let mut words = String::with_capacity(text.len() + 1);
        for w in runs(text) {
            if w.chars().any(|c| c.is_alphabetic() && !c.is_lowercase()) {
                words.push_str(&w.to_lowercase());
            } else {
                words.push_str(w);
            }
            words.push(' ');
        }
        Recent { rank: (m.ts, m.room.clone(), m.seq), words }
    }

    /// Whether every query word is a prefix of one of its words.
    fn matches(&self, query: &[String]) -> bool {
        prefixes_all(query, self.words.split_terminator(' '))
    }
}

impl std::fmt::Debug for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Search(..)")
    }
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER)
        .set_index_option(IndexRecordOption::Basic);
    // Nothing is stored and no field has a term per message: a hit's
    // room, seq and ts are read from the columns, a message is found for
    // its delete by room and seq, and `before` filters on the ts column.
    // A term unique to each message (an id, a millisecond ts) made every
    // commit and merge build and copy a dictionary entry per message.
    let f = Fields {
        room: b.add_text_field("room", STRING | FAST),
        seq: b.add_u64_field("seq", INDEXED | FAST),
        ts: b.add_u64_field("ts", FAST),
        text: b.add_text_field("text", TextOptions::default().set_indexing_options(words)),
    };
    (b.build(), f)
}

impl Search {
    /// Opens the index under `dir`, or makes a new one (a broken index is
    /// thrown away: it is rebuilt from storage).
    pub fn open(dir: &Path) -> tantivy::Result<Arc<Search>> {
        let (schema, f) = schema();
        std::fs::create_dir_all(dir)?;
        let index = match Index::open_in_dir(dir) {
            Ok(i) if i.schema() == schema => i,
            Ok(_) | Err(tantivy::TantivyError::OpenDirectoryError(_)) | Err(_) => {
                log::info!("search: building a new index in {}", dir.display());
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
                Index::create_in_dir(dir, schema)?
            }
        };
        let analyzer = TextAnalyzer::builder(SimpleTokenizer::default()).filter(LowerCaser).build();
        index.tokenizers().register(TOKENIZER, analyzer);
        // Made on a background thread: tantivy's indexing and merging
        // threads inherit its priority (nice 19: indexing gets little of a
        // core the reactors want, so on a busy server it falls behind and
        // catches up later instead of taking time from them).
        let writer = thread::scope(|sc| {
            sc.spawn(|| {
                priority::background();
                index.writer_with_num_threads(1, WRITER_BYTES)
            })
            .join()
        })
        .map_err(|_| tantivy::TantivyError::SystemError("index writer thread panicked".into()))??;
        let marks = index
            .load_metas()?
            .payload
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default();
        // Reloaded by `commit` itself: tantivy's default policy would add a
        // thread (at normal priority) polling meta.json twice a second.
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = Mutex::new(writer);
        let recent = Mutex::new(Vec::new());
        Ok(Arc::new(Search { reader, writer, f, marks: Mutex::new(marks), recent }))
    }

    /// Starts the indexing thread.
    pub fn start(self: &Arc<Search>, storage: Storage, dir: Arc<Directory>) -> std::io::Result<()> {
        let s = self.clone();
        thread::Builder::new().name("chinwag-search".into()).spawn(move || {
            priority::background();
            s.catch_up(&storage);
            // Runs until the process exits: the index is derived, so a
            // commit cut short costs only a re-index at the next start.
            let mut indexed = s.marks.lock().clone();
            let (mut pending, mut committed) = (0, Instant::now());
            loop {
                thread::sleep(POLL);
                let mut due = Vec::new();
                dir.for_each_room(|e| {
                    if e.durable > indexed.get(&*e.name).copied().unwrap_or(0) {
                        due.push((e.name.to_string(), e.durable));
                    }
                });
                let new = s.index_rooms(&storage, due, &mut indexed);
                pending += new;
                let since = committed.elapsed();
                let quiet = new == 0 && since >= COMMIT_QUIET;
                if pending >= COMMIT_EVENTS || (pending > 0 && (quiet || since >= COMMIT_EVERY)) {
                    s.commit(indexed.clone());
                    (pending, committed) = (0, Instant::now());
                }
            }
        })?;
        Ok(())
    }

    /// Indexes `rooms` as the live thread does at a high rate: `per_poll`
    /// events of each room per poll, a commit after every `per_commit`
    /// events; then waits for tantivy's merges. For bench/search.rs, which
    /// counts the CPU this takes per message.
    pub fn replay_live(
        self: Arc<Search>,
        storage: &Storage,
        rooms: &[String],
        per_poll: u64,
        per_commit: u64,
    ) -> tantivy::Result<()> {
        let rooms: Vec<(&String, u64)> =
            rooms.iter().filter_map(|r| Some((r, storage.last_seq(r).ok()?))).collect();
        let (mut indexed, mut pending) = (HashMap::new(), 0);
        let mut upto = 0;
        while rooms.iter().any(|(_, last)| *last > upto) {
            upto += per_poll;
            let due = rooms.iter().map(|(r, last)| (r.to_string(), upto.min(*last))).collect();
            pending += self.index_rooms(storage, due, &mut indexed);
            if pending >= per_commit {
                self.commit(indexed.clone());
                pending = 0;
            }
        }
        self.commit(indexed);
        let Ok(s) = Arc::try_unwrap(self) else {
            return Err(tantivy::TantivyError::SystemError("index still shared".into()));
        };
        s.writer.into_inner().wait_merging_threads()
    }

    /// Indexes whatever storage holds beyond the committed marks (at start).
    fn catch_up(&self, storage: &Storage) {
        let marks = self.marks.lock().clone();
        let due: Vec<(String, u64)> = storage
            .rooms()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|room| {
                let last = storage.last_seq(&room).ok()?;
                (last > marks.get(&room).copied().unwrap_or(0)).then_some((room, last))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        log::info!("search: indexing {} rooms", due.len());
        let mut marks = marks;
        self.index_rooms(storage, due, &mut marks);
        self.commit(marks);
    }

    /// Indexes each room's events up to its seq, moving `marks` (committed
    /// later); returns how many events it went through.
    fn index_rooms(
        &self,
        storage: &Storage,
        due: Vec<(String, u64)>,
        marks: &mut HashMap<String, u64>,
    ) -> u64 {
        let mut done = 0;
        if due.is_empty() {
            return done;
        }
        let writer = self.writer.lock();
        for (room, upto) in due {
            let mark = marks.entry(room.clone()).or_insert(0);
            while *mark < upto {
                match self.index_step(&writer, storage, &room, *mark, upto) {
                    Ok(m) if m > *mark => {
                        done += m - *mark;
                        *mark = m;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        log::warn!("search: cannot index room {room}: {e}");
                        break;
                    }
                }
            }
        }
        done
    }

    /// Re-indexes the messages touched by events `(after, upto]` of `room`
    /// (one step's worth); returns the last seq done.
    fn index_step(
        &self,
        writer: &IndexWriter,
        storage: &Storage,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<u64, String> {
        let (events, _) =
            storage.history(room, Cursor::After(after), STEP).map_err(|e| e.to_string())?;
        let mut touched = BTreeSet::new();
        let mut done = after;
        for ev in events.iter().take_while(|e| e.seq <= upto) {
            match ev.kind {
                Kind::Message => touched.insert(ev.seq),
                Kind::Edit | Kind::Delete => touched.insert(ev.target.unwrap_or(0)),
                Kind::Reaction => false,
            };
            done = ev.seq;
        }
        for seq in touched {
            // Only a message below the mark can be in the index already: a
            // delete costs the commit a lookup in every segment, so new
            // messages (nearly all of them) go without.
            if seq <= after {
                writer
                    .delete_query(Box::new(BooleanQuery::intersection(vec![
                        Box::new(self.term(Term::from_field_text(self.f.room, room))),
                        Box::new(self.term(Term::from_field_u64(self.f.seq, seq))),
                    ])))
                    .map_err(|e| e.to_string())?;
            }
            // A message's event in the page (sorted by seq) carries its
            // current state, with any edit or delete: only older messages
            // are read again.
            let added = match events.binary_search_by_key(&seq, |e| e.seq) {
                Ok(i) => self.add(writer, &events[i]),
                Err(_) => match storage.event(room, seq).map_err(|e| e.to_string())? {
                    Some(m) => self.add(writer, &m),
                    None => Ok(()),
                },
            };
            added.map_err(|e| e.to_string())?;
        }
        Ok(done)
    }

    fn add(&self, writer: &IndexWriter, m: &Msg) -> tantivy::Result<()> {
        let (Kind::Message, false, Some(text)) = (m.kind, m.deleted, m.text.as_deref()) else {
            return Ok(());
        };
        let mut doc = TantivyDocument::new();
        doc.add_text(self.f.room, &m.room);
        doc.add_u64(self.f.seq, m.seq);
        doc.add_u64(self.f.ts, m.ts);
        doc.add_text(self.f.text, text);
        writer.add_document(doc)?;
        let mut recent = self.recent.lock();
        if recent.len() < RECENT_MAX {
            recent.push(Recent::new(m, text));
        }
        Ok(())
    }

    fn term(&self, t: Term) -> TermQuery {
        TermQuery::new(t, IndexRecordOption::Basic)
    }

    /// Commits with the marks as payload, and makes it searchable.
    fn commit(&self, marks: HashMap<String, u64>) {
        let payload = serde_json::to_string(&marks).unwrap_or_default();
        let mut writer = self.writer.lock();
        let done = writer.prepare_commit().and_then(|mut p| {
            p.set_payload(&payload);
            p.commit()
        });
        drop(writer);
        match done.and_then(|_| self.reader.reload()) {
            Ok(()) => {
                *self.marks.lock() = marks;
                // Only now: a query that took the list before this saw
                // the older reader or sees a hit twice, never none.
                self.recent.lock().clear();
            }
            Err(e) => log::warn!("search: commit failed: {e}"),
        }
    }

    /// The uncommitted messages of `rooms` that match `query`, below
    /// `before`, newest first.
    fn recent_hits(&self, query: &[String], rooms: &[String], before: Option<&Rank>) -> Vec<Rank> {
        let recent = self.recent.lock();
        if recent.is_empty() {
            return Vec::new();
        }
        let rooms: std::collections::HashSet<&str> = rooms.iter().map(String::as_str).collect();
        let mut hits: Vec<Rank> = recent
            .iter()
            .filter(|r| rooms.contains(r.rank.1.as_str()) && before.is_none_or(|b| r.rank < *b))
            .filter(|r| r.matches(query))
            .map(|r| r.rank.clone())
            .collect();
        drop(recent);
        hits.sort_by(|a, b| b.cmp(a));
        hits
    }

    /// Messages of `rooms` whose text has every word of `query` (lowercase
    /// words) as a word prefix, ranked below `before`, newest first: up to
    /// `want` of them, and whether the index had more.
    pub fn query(
        &self,
        query: &[String],
        rooms: &[String],
        before: Option<&Rank>,
        want: usize,
    ) -> tantivy::Result<(Vec<Rank>, bool)> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for w in query {
            // Words are letters and digits only: nothing to escape.
            clauses.push((
                Occur::Must,
                Box::new(RegexQuery::from_pattern(&format!("{w}.*"), self.f.text)?),
            ));
        }
        let room_terms = rooms.iter().map(|r| Term::from_field_text(self.f.room, r));
        let by_room: Box<dyn Query> = match rooms {
            [one] => Box::new(self.term(Term::from_field_text(self.f.room, one))),
            _ => Box::new(TermSetQuery::new(room_terms)),
        };
        clauses.push((Occur::Must, by_room));
        if let Some((ts, _, _)) = before {
            let hi = Bound::Included(Term::from_field_u64(self.f.ts, *ts));
            clauses.push((Occur::Must, Box::new(RangeQuery::new(Bound::Unbounded, hi))));
        }
        // Taken before the searcher: see `commit`.
        let fresh = self.recent_hits(query, rooms, before);
        let searcher = self.reader.searcher();
        let query = BooleanQuery::new(clauses);
        // Each segment's room and seq columns, by segment ordinal: a hit's
        // room and seq are read from them (nothing is stored).
        let columns = searcher
            .segment_readers()
            .iter()
            .map(|r| Ok((r.fast_fields().str("room")?, r.fast_fields().u64("seq")?)))
            .collect::<tantivy::Result<Vec<_>>>()?;
        let mut fetch = want + SLACK;
        loop {
            let top = TopDocs::with_limit(fetch).order_by_fast_field::<u64>("ts", Order::Desc);
            let hits = searcher.search(&query, &top)?;
            let full = hits.len() == fetch;
            let mut out = Vec::with_capacity(hits.len());
            for (ts, addr) in hits {
                let (room, seq) = &columns[addr.segment_ord as usize];
                let mut name = String::new();
                if let Some(room) = room {
                    if let Some(ord) = room.term_ords(addr.doc_id).next() {
                        room.ord_to_str(ord, &mut name)?;
                    }
                }
                out.push((ts, name, seq.first(addr.doc_id).unwrap_or(0)));
            }
            out.sort_by(|a, b| b.cmp(a));
            // Hits that share the last ts may have been cut anywhere in
            // their (room, seq) order: keep only the ts above it, and
            // fetch more when that leaves too few.
            let floor = full.then(|| out.last().map_or(0, |r| r.0));
            if let Some(floor) = floor {
                out.retain(|r| r.0 > floor);
            }
            if let Some(before) = before {
                out.retain(|r| r < before);
            }
            if full && out.len() <= want && fetch < MAX_FETCH {
                fetch *= 4;
                continue;
            }
            // The uncommitted hits merge in where the index's are
            // complete: past a cut, they come with a later page.
            let at = fresh.partition_point(|r| floor.is_none_or(|f| r.0 > f));
            out.extend_from_slice(&fresh[..at]);
            out.sort_by(|a, b| b.cmp(a));
            out.dedup();
            let more = full || out.len() > want;
            out.truncate(want);
            return Ok((out, more));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(s: &Search, room: &str, seq: u64, ts: u64, text: &str) {
        let m = Msg { seq, ts, ..Msg::message(room, "ann", text.into()) };
        s.add(&s.writer.lock(), &m).unwrap();
    }

    fn find(s: &Search, word: &str, before: Option<&Rank>, want: usize) -> (Vec<Rank>, bool) {
        s.query(&[word.to_string()], &["r".to_string()], before, want).unwrap()
    }

    fn rank(ts: u64, seq: u64) -> Rank {
        (ts, "r".to_string(), seq)
    }

    #[test]
    fn the_words_kept_in_memory_are_the_words_the_index_gets() {
        let m = Msg::message("r", "ann", String::new());
        for text in ["plain words", "MiXed-Case, ÜBER!", "ΟΔΟΣ σοφός", "ǅemal 東京 x2", ""]
        {
            let joined: String = words(text).iter().map(|w| format!("{w} ")).collect();
            assert_eq!(Recent::new(&m, text).words, joined, "{text}");
        }
    }

    #[test]
    fn what_is_not_committed_yet_is_found_from_memory_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Search::open(dir.path()).unwrap();
        add(&s, "r", 1, 10, "Rocket launch");
        add(&s, "r", 2, 20, "lunch");
        add(&s, "other", 1, 30, "rocket");
        // Nothing is committed: found in memory, in the rooms asked only.
        assert_eq!(find(&s, "rock", None, 10), (vec![rank(10, 1)], false));

        s.commit(HashMap::new());
        assert!(s.recent.lock().is_empty(), "a commit empties the list");
        assert_eq!(find(&s, "rock", None, 10), (vec![rank(10, 1)], false));

        // Uncommitted and committed hits page together, newest first.
        add(&s, "r", 3, 40, "rocketry");
        let (first, more) = find(&s, "rock", None, 1);
        assert_eq!((first.clone(), more), (vec![rank(40, 3)], true));
        assert_eq!(find(&s, "rock", Some(&first[0]), 1), (vec![rank(10, 1)], false));

        // A message indexed again before the commit (an edit) shows once.
        add(&s, "r", 1, 10, "rocket science");
        assert_eq!(find(&s, "rock", None, 10), (vec![rank(40, 3), rank(10, 1)], false));
        assert_eq!(find(&s, "sci", None, 10), (vec![rank(10, 1)], false));
    }
}
