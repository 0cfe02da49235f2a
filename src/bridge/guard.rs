//! The seq script and its guard: where a cluster decides the order of a
//! room's events, the rules that another node's event can break (a target
//! deleted meanwhile, a 21st emoji) are checked again, so every node
//! applies the same events and none breaks a rule.

use crate::{
    cluster::{gone_key, log_key, reactions_key, seq_key, Guard},
    fanout::Reply,
    node::Node,
    storage::{self, MAX_EMOJI},
};
use redis::Value;

/// Entries kept in each room's log stream (approximately).
const LOG_LEN: usize = 10_000;

/// How long Redis keeps a room's deleted set and a message's reaction
/// counts after their last change. Only events in flight can be ahead of
/// a node's own copy, and each node checks its copy first, so a forgotten
/// key is rebuilt from that copy (the reactions) or not needed (deletes).
const GUARD_TTL_S: u64 = 7 * 24 * 3600;

/// Checks a room event's guard, then allocates the room's next seq, logs
/// and publishes the event, atomically: the order Redis decides is the
/// order in which every node checks the rules.
/// KEYS: 1 seq counter, 2 log stream, 3 the room's deleted set, 4 the
/// target's reactions (a hash: `n` distinct emoji, `e:<emoji>` its count,
/// `u:<emoji>\0<user>` present).
/// ARGV: 1 the event body (MessagePack without seq), 2 this node's last seq
/// of the room (a Redis that came back empty must not reuse seqs), 3 log
/// length, 4 TTL of the guard keys, 5 guard (`` none, `l` target live, `d`
/// delete, `r` reaction), 6 target, 7 emoji, 8 user, 9 on (`1`/`0`), 10 the
/// emoji limit, 11 `1` when the rest are the target's reactions (emoji,
/// user pairs) to start the hash from.
/// Returns the seq, or -1 (target deleted), -2 (emoji limit), -3 (no
/// reaction counts here: send the node's own).
///
/// A key of ours that holds something else (overwritten by another
/// program, or by hand) heals instead of failing every event of its room:
/// a guard key of the wrong type is dropped, as if Redis had forgotten it
/// (the node's own check comes first, and the reactions are seeded again);
/// a counter that is not a number counts as lost, like one of a Redis that
/// came back empty; a log that is not a stream is replaced; and where the
/// log is ahead of the counter, the seq goes on after the log's last entry,
/// so that no seq is given twice.
pub(super) const SEQ_SCRIPT: &str = r#"
local guard = ARGV[5]
if guard ~= '' then
  for i, want in ipairs({'set', 'hash'}) do
    local t = redis.call('TYPE', KEYS[i + 2]).ok
    if t ~= 'none' and t ~= want then redis.call('DEL', KEYS[i + 2]) end
  end
  if redis.call('SISMEMBER', KEYS[3], ARGV[6]) == 1 then return -1 end
  if guard == 'd' then
    redis.call('SADD', KEYS[3], ARGV[6])
    redis.call('EXPIRE', KEYS[3], ARGV[4])
    redis.call('DEL', KEYS[4])
  elseif guard == 'r' then
    local rx = KEYS[4]
    local function add(emoji, user)
      local u = 'u:' .. emoji .. '\0' .. user
      if redis.call('HSETNX', rx, u, 1) == 1 then
        if redis.call('HINCRBY', rx, 'e:' .. emoji, 1) == 1 then
          redis.call('HINCRBY', rx, 'n', 1)
        end
      end
    end
    if redis.call('EXISTS', rx) == 0 then
      if ARGV[11] ~= '1' then return -3 end
      redis.call('HSET', rx, 'n', 0)
      for i = 12, #ARGV - 1, 2 do add(ARGV[i], ARGV[i + 1]) end
    end
    local emoji = ARGV[7]
    if ARGV[9] == '1' then
      local new = redis.call('HEXISTS', rx, 'e:' .. emoji) == 0
      if new and tonumber(redis.call('HGET', rx, 'n')) >= tonumber(ARGV[10]) then return -2 end
      add(emoji, ARGV[8])
    elseif redis.call('HDEL', rx, 'u:' .. emoji .. '\0' .. ARGV[8]) == 1 then
      if redis.call('HINCRBY', rx, 'e:' .. emoji, -1) <= 0 then
        redis.call('HDEL', rx, 'e:' .. emoji)
        redis.call('HINCRBY', rx, 'n', -1)
      end
    end
    redis.call('EXPIRE', rx, ARGV[4])
  end
end
local cur = tonumber(redis.pcall('GET', KEYS[1])) or 0
local floor = tonumber(ARGV[2])
if cur < floor then cur = floor end
local seq = cur + 1
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'm', ARGV[1])
if type(added) == 'table' and added.err then
  if redis.call('TYPE', KEYS[2]).ok ~= 'stream' then
    redis.call('DEL', KEYS[2])
  else
    local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
    local last = top[1] and tonumber(string.match(top[1][1], '^%d+')) or 0
    if last >= seq then seq = last + 1 end
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'm', ARGV[1])
end
redis.call('SET', KEYS[1], seq)
redis.call('PUBLISH', 'chinwag:events', 'M' .. seq .. ' ' .. ARGV[1])
return seq
"#;

/// What the seq script answered for one room event.
pub(super) enum Outcome {
    /// It has this seq; its sender is answered once it is applied here.
    Taken,
    /// A rule refused it: the sender's answer.
    Refused(Reply),
    /// Redis has no reaction counts for the target: send it again with
    /// this node's own.
    NeedSeed,
    /// Anything else (a Redis error): the connection is remade.
    Failed(String),
}

/// The script's answer as an [`Outcome`].
pub(super) fn outcome(node: &Node, reply: Option<Value>) -> Outcome {
    match reply {
        Some(Value::Int(seq)) if seq > 0 => Outcome::Taken,
        Some(Value::Int(-1)) => Outcome::Refused(Reply::Refused(storage::not_found())),
        Some(Value::Int(-2)) => {
            node.metrics().refuse("limit_reached");
            Outcome::Refused(Reply::Refused(storage::emoji_limit()))
        }
        Some(Value::Int(-3)) => Outcome::NeedSeed,
        other => Outcome::Failed(format!("unexpected reply {other:?}")),
    }
}

/// The `EVALSHA` of one room event; `seed`: the target's reactions as this
/// node has them (only after [`Outcome::NeedSeed`]).
pub(super) fn command(
    sha: &str,
    room: &str,
    body: &[u8],
    floor: u64,
    guard: &Guard,
    seed: Option<&[(String, Vec<String>)]>,
) -> redis::Cmd {
    let target = guard.target().unwrap_or(0);
    let mut c = redis::cmd("EVALSHA");
    c.arg(sha).arg(4).arg(seq_key(room)).arg(log_key(room));
    // A plain message (most events) touches neither guard key: no need to
    // name them.
    match guard {
        Guard::None => c.arg("").arg(""),
        _ => c.arg(gone_key(room)).arg(reactions_key(room, target)),
    };
    c.arg(body).arg(floor).arg(LOG_LEN).arg(GUARD_TTL_S);
    let (kind, emoji, user, on) = match guard {
        Guard::None => ("", "", "", false),
        Guard::Live(_) => ("l", "", "", false),
        Guard::Delete(_) => ("d", "", "", false),
        Guard::React { emoji, user, on, .. } => ("r", emoji.as_str(), user.as_str(), *on),
    };
    c.arg(kind).arg(target).arg(emoji).arg(user).arg(if on { "1" } else { "0" }).arg(MAX_EMOJI);
    c.arg(if seed.is_some() { "1" } else { "0" });
    for (emoji, users) in seed.unwrap_or_default() {
        for u in users {
            c.arg(emoji).arg(u);
        }
    }
    c
}

/// The target's reactions as this node has them, or the refusal if it is
/// gone here too.
pub(super) fn seed(
    node: &Node,
    room: &str,
    guard: &Guard,
) -> Result<Vec<(String, Vec<String>)>, Reply> {
    let target = guard.target().unwrap_or(0);
    match node.storage().live_message(room, target) {
        Ok(Some(m)) => Ok(m.reactions),
        Ok(None) => Err(Reply::Refused(storage::not_found())),
        Err(_) => Err(Reply::Unavailable(crate::fanout::STORAGE_DOWN)),
    }
}
