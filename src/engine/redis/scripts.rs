//! The Lua scripts: one per state change, each one atomic step in Redis
//! (checks, counters, appends and the publish of its events). A script
//! answers `E:<code>[:<detail>]` for a refusal, anything else for success.
//!
//! They are the functions of one Redis function library (`FUNCTION LOAD`,
//! called with `FCALL`) rather than `EVALSHA` scripts: a script runs its
//! whole text on every call, shared helpers included, while a library's
//! helpers are made once when it is loaded. A library is made for one
//! configuration (key prefix, log lengths, retention, webhooks on or off),
//! which it holds as constants instead of taking them with every call. The
//! library and its functions are named after a hash of its text and that
//! configuration, so that a node never calls a function another build or
//! configuration loaded (the nodes sharing a Redis still run one build: how
//! a channel's state is stored changes between builds).
//!
//! Every call carries its deadline, in Redis's time (see `clock.rs`): the
//! library runs `begin` (in `prelude.lua`) before each function's body,
//! and a call that comes after its deadline does nothing and answers
//! `E:late:<Redis's time>`.

use sha2::{Digest, Sha256};

const PRELUDE: &str = include_str!("prelude.lua");

/// A:1 identity, 2 role, 3 anonymous ("1"/"0"), 4 idle TTL (s), 5 most
/// anonymous identities → `{"role","anon"}`. A new identity expires unless
/// a session attaches. Anonymous identities are counted in `anon` (score:
/// when each expires, +inf while it has sessions).
const IDENTIFY: &str = r#"
local k = P .. ':id:' .. A(1)
if A(3) == '1' and redis.call('EXISTS', k) == 0 then
  local anon = P .. ':anon'
  redis.call('ZREMRANGEBYSCORE', anon, '-inf', '(' .. NOW)
  if redis.call('ZCARD', anon) >= tonumber(A(5)) then return 'E:full' end
  redis.call('ZADD', anon, NOW + 1000 * tonumber(A(4)), A(1))
end
if redis.call('HSETNX', k, 'role', A(2)) == 1 then redis.call('EXPIRE', k, A(4)) end
redis.call('HSETNX', k, 'anon', A(3))
local h = redis.call('HMGET', k, 'role', 'anon')
return cjson.encode({ role = h[1], anon = (h[2] == '1') })
"#;

/// A:1 identity, 2 most sessions per identity. Counts the session on this
/// node (and notes the identity among the node's, for when it dies) and
/// answers the identity's state with its topics' positions.
const ATTACH: &str = r#"
local id = A(1)
local sk = P .. ':ids:' .. id
if live_sum(sk) >= tonumber(A(2)) then return 'E:full' end
redis.call('HINCRBY', sk, NODE, 1)
redis.call('SADD', P .. ':nodeids:' .. NODE, id)
for _, k in ipairs({ P .. ':id:' .. id, P .. ':idd:' .. id }) do redis.call('PERSIST', k) end
redis.call('ZADD', P .. ':anon', 'XX', '+inf', id)
local h = redis.call('HMGET', P .. ':id:' .. id, 'x', 'eng', 'eat')
local chans = {}
for _, sid in ipairs(redis.call('SMEMBERS', P .. ':idc:' .. id)) do
  chans[#chans + 1] = channel_state(sid)
end
return cjson.encode({
  seq = seq_of('i:' .. id), x = (h[1] == '1'), eng = h[2] or '', eat = h[3] or '',
  chans = chans, drafts = redis.call('HGETALL', P .. ':idd:' .. id),
})
"#;

/// A:1 identity, 2 idle TTL (s). A session ended; an identity left with
/// no session, no channel and no engagement is forgotten after the TTL
/// (an anonymous customer's resume token then gives a fresh identity).
const DETACH: &str = r#"
local id = A(1)
local sk = P .. ':ids:' .. id
if tonumber(redis.call('HINCRBY', sk, NODE, -1)) <= 0 then
  redis.call('HDEL', sk, NODE)
  redis.call('SREM', P .. ':nodeids:' .. NODE, id)
end
forget_if_idle(id, A(2))
return 'OK'
"#;

/// A:1 identity, 2 this node's sessions of it now. Puts the node's count
/// right after a session count could not be lowered (Redis was away).
const SESSIONS: &str = r#"
local sk = P .. ':ids:' .. A(1)
if tonumber(A(2)) > 0 then
  redis.call('HSET', sk, NODE, A(2))
  redis.call('SADD', P .. ':nodeids:' .. NODE, A(1))
else
  redis.call('HDEL', sk, NODE)
  redis.call('SREM', P .. ':nodeids:' .. NODE, A(1))
end
return 'OK'
"#;

/// A:1 SCAN cursor ("0": a new pass), 2 `[history] max_age_secs` in ms,
/// 3 channel logs looked at per call, 4 most log entries read per call, 5
/// how long a pass holds the cluster's turn (ms) → the cursor to go on
/// from ("0": the pass is over), or "busy" when another node took this
/// period's pass. Age retention: a channel's log (its history) loses its
/// messages older than the age, from the front, with the other events
/// between them (those after its last old message stay). A message carries
/// its node's time last (`"ms":<unix ms>}`); messages are appended in time
/// order, so the walk stops at the first young one, and an unreadable one
/// counts as young. Trimmed by `XTRIM MINID`, so the log's ids (its seqs,
/// and so the indexes) carry on. One node a period takes the pass (the
/// `purge` key, never given back: it expires with the period); a call
/// whose entry budget runs out in the middle of a scan page answers the
/// same cursor (a page scanned again costs a little; what was trimmed
/// stays trimmed).
const PURGE: &str = r#"
local cursor = A(1)
if cursor == '0' and not redis.call('SET', P .. ':purge', NODE, 'NX', 'PX', A(5)) then
  return 'busy'
end
local cutoff, rows_left = NOW - tonumber(A(2)), tonumber(A(4))
local pattern = string.gsub(P, '[%*%?%[%]\\]', '\\%0') .. ':ev:c:*'
local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', A(3), 'TYPE', 'stream')
for _, key in ipairs(page[2]) do
  local upto, from, young = nil, '-', false
  while not young do
    if rows_left <= 0 then
      if upto then redis.call('XTRIM', key, 'MINID', '0-' .. (tonumber(string.sub(upto, 3)) + 1)) end
      return cursor
    end
    local rows = redis.call('XRANGE', key, from, '+', 'COUNT', math.min(rows_left, 64))
    rows_left = rows_left - #rows - 1
    for _, row in ipairs(rows) do
      local e = row[2][2]
      if string.sub(e, 1, 10) == '{"t":"msg"' then
        local ms = tonumber(string.match(e, '"ms":(%-?%d+)}$'))
        if not ms or ms >= cutoff then young = true break end
        upto = row[1]
      end
    end
    if #rows == 0 then break end
    from = '(' .. rows[#rows][1]
  end
  if upto then redis.call('XTRIM', key, 'MINID', '0-' .. (tonumber(string.sub(upto, 3)) + 1)) end
end
return page[1]
"#;

/// A:1 idle TTL (s), 2 how long past its end a typing period waits for
/// the node that began it (ms), 3 most entries handled per call. Run by
/// every node on each heartbeat: what a dead node (its heartbeat key
/// expired) held for its sessions is recounted (session counts; an
/// identity left without sessions starts to expire, as after its last
/// session's end; observer counts, an abandoned channel being retired),
/// and typing periods nobody ended are ended (`typingEnded`). Bounded per
/// call; the rest waits for the next heartbeat. → entries handled.
const REAP: &str = r#"
local budget = tonumber(A(3))
local done = 0
redis.call('SADD', P .. ':nodes', NODE)
for _, n in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  if done >= budget then break end
  if redis.call('EXISTS', P .. ':node:' .. n) == 0 then
    local idset, chset = P .. ':nodeids:' .. n, P .. ':nodecho:' .. n
    local popped = {}
    if budget > done then popped = redis.call('SPOP', idset, budget - done) end
    for _, id in ipairs(popped) do
      redis.call('HDEL', P .. ':ids:' .. id, n)
      forget_if_idle(id, A(1))
      done = done + 1
    end
    popped = {}
    if budget > done then popped = redis.call('SPOP', chset, budget - done) end
    for _, sid in ipairs(popped) do
      redis.call('HDEL', P .. ':cho:' .. sid, n)
      local ch = P .. ':ch:' .. sid
      if redis.call('EXISTS', ch) == 1 and redis.call('HGET', ch, 'closed') ~= '1' and abandoned(sid) then
        retire(sid)
      end
      done = done + 1
    end
    if redis.call('EXISTS', idset) == 0 and redis.call('EXISTS', chset) == 0 then
      redis.call('SREM', P .. ':nodes', n)
    end
  end
end
local due = P .. ':ty:due'
local late = redis.call('ZRANGEBYSCORE', due, '-inf', NOW - tonumber(A(2)), 'LIMIT', 0, math.max(budget - done, 0))
for _, entry in ipairs(late) do
  local bar = string.find(entry, '|', 1, true)
  local sid, id = string.sub(entry, 1, bar - 1), string.sub(entry, bar + 1)
  local key = P .. ':ty:' .. sid .. ':' .. id
  local token = redis.call('GET', key)
  if token and token ~= 'ended' then
    -- Still going (extended since): due again when its key expires.
    redis.call('ZADD', due, NOW + math.max(redis.call('PTTL', key), 0), entry)
  else
    if not token then
      redis.call('SET', key, 'ended', 'PX', 60000)
      if redis.call('HEXISTS', P .. ':chm:' .. sid, id) == 1 then
        transient('c:' .. sid, '{"t":"typing_off","sid":' .. q(sid) .. ',"id":' .. q(id) .. '}')
      end
    end
    undue(sid, id)
  end
  done = done + 1
end
return tostring(done)
"#;

/// A:1 sid → the channel's state and position.
const CHANNEL: &str = r#"
return cjson.encode(channel_state(A(1)))
"#;

/// A:1 queue → its position and open engagements.
const QUEUE: &str = r#"
local queue = A(1)
local open = {}
for _, sid in ipairs(redis.call('ZRANGE', P .. ':q:' .. queue, 0, -1)) do
  local h = redis.call('HMGET', P .. ':ch:' .. sid, 'cust', 'form', 'at')
  if h[1] then
    open[#open + 1] = { sid = sid, id = h[1], form = h[2], at = h[3], mem = members(sid) }
  end
end
return cjson.encode({ seq = seq_of('q:' .. queue), open = open })
"#;

/// A:1 identity, 2 new sid, 3 queue, 4 formData (JSON), 5 startedAt.
const START: &str = r#"
local id, sid, queue, form, at = A(1), A(2), A(3), A(4), A(5)
local idk = P .. ':id:' .. id
local eng = redis.call('HGET', idk, 'eng')
if eng then return 'E:engaged:' .. eng end
redis.call('HSET', P .. ':ch:' .. sid, 's', '0', 'm:' .. id, '1', 'q', queue, 'cust', id, 'form', form, 'at', at)
redis.call('HSET', P .. ':chm:' .. sid, id, 'customer')
redis.call('SADD', P .. ':idc:' .. id, sid)
redis.call('HSET', idk, 'eng', sid, 'eat', at)
redis.call('ZADD', P .. ':q:' .. queue, 0, sid)
emit('c:' .. sid, '{"t":"opened","id":' .. q(id) .. '}')
local started = '{"t":"started","sid":' .. q(sid) .. ',"id":' .. q(id) .. ',"form":' .. form
  .. ',"at":' .. q(at) .. ',"q":' .. q(queue) .. '}'
emit('i:' .. id, started)
emit('q:' .. queue, started)
return 'OK'
"#;

/// A:1 identity.
const RESTART: &str = r#"
local id = A(1)
local eng = redis.call('HGET', P .. ':id:' .. id, 'eng')
if not eng then return 'E:no_engagement' end
remove(id, eng, 'restart', 'restart', false, false)
return eng
"#;

/// A:1 sid, 2 member who must be in it ("" for none), 3 reason.
const END: &str = r#"
local sid, member, reason = A(1), A(2), A(3)
local ch = P .. ':ch:' .. sid
if redis.call('EXISTS', ch) == 0 then
  if member ~= '' then return 'E:not_a_member' end
  return 'E:not_found'
end
if member ~= '' and redis.call('HEXISTS', P .. ':chm:' .. sid, member) == 0 then return 'E:not_a_member' end
if redis.call('HGET', ch, 'closed') == '1' then return 'E:not_found' end
for _, m in ipairs(members(sid)) do
  remove(m.identity, sid, 'ended', reason, true, true)
end
retire(sid)
return 'OK'
"#;

/// A:1 identity, 2 role, 3 sid, 4 most members.
const JOIN: &str = r#"
local id, role, sid = A(1), A(2), A(3)
local ch = P .. ':ch:' .. sid
local h = redis.call('HMGET', ch, 'q', 'closed')
if not h[1] or h[2] == '1' then return 'E:not_found' end
local next = seq_of('c:' .. sid) - others(sid)
local chm = P .. ':chm:' .. sid
if redis.call('HEXISTS', chm, id) == 0 then
  if redis.call('HLEN', chm) >= tonumber(A(4)) then return 'E:full' end
  redis.call('HSET', chm, id, role)
  redis.call('HSET', ch, 'm:' .. id, '1')
  redis.call('SADD', P .. ':idc:' .. id, sid)
  local joined = emit('c:' .. sid, '{"t":"joined","sid":' .. q(sid) .. ',"id":' .. q(id) .. ',"r":' .. q(role) .. '}')
  emit('q:' .. h[1], updated(sid))
  emit('i:' .. id, '{"t":"member_of","sid":' .. q(sid) .. ',"seq":' .. joined .. '}')
end
return cjson.encode({ mem = members(sid), last = next - 1 })
"#;

/// A:1 identity, 2 sid, 3 reason.
const LEAVE: &str = r#"
if not remove(A(1), A(2), A(3), A(3), false, false) then return 'E:not_a_member' end
return 'OK'
"#;

/// Of the common arguments only the deadline. A:1 identity, 2 sid, 3 by
/// the broker ("1": a service identity posting as the broker, which needs
/// no membership), 4 the message's JSON after its index (`"sid":…}`), 5
/// its time (unix ms, the node's: the webhook event's; only with a
/// post-event webhook) → the message's index. One read: the
/// channel's `s` and the author's `m:<id>` in its hash. The message is
/// stored once: as its event in the channel's log, which is the channel's
/// history too. Its only write is that append (and the webhook outbox's,
/// when configured), so that Redis writes it to the AOF as one command (no
/// `MULTI`/`EXEC`): the event carries the channel's count of other events
/// (`"o"`) instead of its index, which is its seq - 1 - that count.
const POST: &str = r#"
local id, sid = A(1), A(2)
local ch = P .. ':ch:' .. sid
local h = redis.call('HMGET', ch, 's', 'm:' .. id)
if not h[1] and migrate(sid) then h = redis.call('HMGET', ch, 's', 'm:' .. id) end
local o = h[1]
local typing, full = false, false
if not tonumber(o) then
  -- Not a plain count: typing periods due, a full log, closed or no
  -- channel. An ended channel is as good as gone (customers cannot tell
  -- either from someone else's).
  local x, ty, f
  x, o, ty, f = string.match(o or 'x', '^(x?)(%d+):?(%d*)(f?)$')
  if not o or x == 'x' then return 'E:no_channel' end
  typing, full = ty ~= '', f == 'f'
end
if not h[2] and A(3) ~= '1' then return 'E:not_a_member' end
if typing then end_typing(sid, id, h[1]) end
local key = P .. ':ev:c:' .. sid
local json = '{"t":"msg","o":' .. o .. ',' .. A(4)
-- The log is capped at the history's length: by the append itself once it
-- has reached it, until then not at all (a cap on every append costs
-- Redis about 2,900 instructions).
local seq
if full then
  seq = string.sub(redis.call('XADD', key, 'MAXLEN', HISTLEN, '0-*', 'e', json), 3)
else
  seq = string.sub(redis.call('XADD', key, '0-*', 'e', json), 3)
end
redis.call('PUBLISH', key, seq .. '|' .. json)
local n = tonumber(seq)
if not full and n >= HISTMAX then
  if n > HISTMAX then redis.call('XTRIM', key, 'MAXLEN', HISTLEN) end
  add_state(sid, 0, 0, 'f')
end
local index = tostring(n - 1 - tonumber(o))
if WHMAX ~= '0' then
  NOW = A(5)
  to_webhooks('c:' .. sid, '{"t":"msg","i":' .. index .. ',' .. A(4))
end
return index
"#;

/// A:1 identity, 2 "toggle" or "minimize", 3 origin → "1"/"0" expanded.
const WIDGET: &str = r#"
local idk = P .. ':id:' .. A(1)
local was = redis.call('HGET', idk, 'x') == '1'
local now = (A(2) == 'toggle') and not was
if now ~= was then
  redis.call('HSET', idk, 'x', now and '1' or '0')
  emit('i:' .. A(1), '{"t":"widget","x":' .. tostring(now) .. ',"o":' .. q(A(3)) .. '}')
end
return now and '1' or '0'
"#;

/// A:1 identity, 2 sid, 3 body ("" clears), 4 origin.
const DRAFT: &str = r#"
local id, sid, body = A(1), A(2), A(3)
if redis.call('SISMEMBER', P .. ':idc:' .. id, sid) == 0 then return 'E:not_a_member' end
if body == '' then
  redis.call('HDEL', P .. ':idd:' .. id, sid)
else
  redis.call('HSET', P .. ':idd:' .. id, sid, body)
end
emit('i:' .. id, '{"t":"draft","sid":' .. q(sid) .. ',"b":' .. q(body) .. ',"o":' .. q(A(4)) .. '}')
return 'OK'
"#;

/// A:1 identity, 2 sid, 3 window (ms), 4 token of this typing period.
/// → "1" when a period began (the caller ends it), "0" when extended.
const TYPING: &str = r#"
local id, sid = A(1), A(2)
local ch = P .. ':ch:' .. sid
local h = redis.call('HMGET', ch, 'q', 'closed', 's', 'm:' .. id)
if not h[1] then return 'E:no_channel' end
if not h[3] and migrate(sid) then h = redis.call('HMGET', ch, 'q', 'closed', 's', 'm:' .. id) end
if h[2] == '1' or not h[4] then return 'E:not_a_member' end
local key = P .. ':ty:' .. sid .. ':' .. id
local current = redis.call('GET', key)
set_due(sid, id, NOW + tonumber(A(3)), h[3])
if not current or current == 'ended' then
  redis.call('SET', key, A(4), 'PX', A(3))
  transient('c:' .. sid, '{"t":"typing_on","sid":' .. q(sid) .. ',"id":' .. q(id) .. '}')
  return '1'
end
redis.call('PEXPIRE', key, A(3))
return '0'
"#;

/// A:1 identity, 2 sid, 3 token. → the ms left of this period, or "0"
/// when it ended now (typingEnded published) or was already over.
const TYPING_END: &str = r#"
local id, sid = A(1), A(2)
local key = P .. ':ty:' .. sid .. ':' .. id
local token = redis.call('GET', key)
if token == A(3) then return tostring(math.max(redis.call('PTTL', key), 1)) end
if not token then
  undue(sid, id)
  if redis.call('HEXISTS', P .. ':chm:' .. sid, id) == 1 then
    transient('c:' .. sid, '{"t":"typing_off","sid":' .. q(sid) .. ',"id":' .. q(id) .. '}')
  end
end
return '0'
"#;

/// A:1 sid. This node's sessions observe the channel once more.
const OBSERVE: &str = r#"
local sid = A(1)
local h = redis.call('HMGET', P .. ':ch:' .. sid, 'q', 'closed')
if not h[1] or h[2] == '1' then return 'E:not_found' end
redis.call('HINCRBY', P .. ':cho:' .. sid, NODE, 1)
redis.call('SADD', P .. ':nodecho:' .. NODE, sid)
return cjson.encode(channel_state(sid))
"#;

/// A:1 sid. One observer less; an abandoned channel is retired.
const UNOBSERVE: &str = r#"
local sid = A(1)
local ch = P .. ':ch:' .. sid
local cho = P .. ':cho:' .. sid
if tonumber(redis.call('HINCRBY', cho, NODE, -1)) <= 0 then
  redis.call('HDEL', cho, NODE)
  redis.call('SREM', P .. ':nodecho:' .. NODE, sid)
end
if redis.call('EXISTS', ch) == 1 and redis.call('HGET', ch, 'closed') ~= '1' and abandoned(sid) then
  retire(sid)
end
return 'OK'
"#;

/// A:1 identity, 2 sid, 3 before, 4 limit, 5 subscriber here ("1"),
/// 6 staff ("1"), 7 any reader ("1": the server API) →
/// `{"msgs":[json…],"more":bool}`.
const HISTORY: &str = r#"
local id, sid, before, limit = A(1), A(2), A(3), tonumber(A(4))
local h = redis.call('HMGET', P .. ':ch:' .. sid, 'q', 'closed')
if not h[1] then
  if A(6) == '1' or A(7) == '1' then return 'E:not_found' end
  return 'E:not_a_member'
end
local member = redis.call('HEXISTS', P .. ':chm:' .. sid, id) == 1
if not (A(7) == '1' or member or A(5) == '1' or (A(6) == '1' and h[2] == '1')) then
  return 'E:not_a_member'
end
local msgs = {}
local b = tonumber(before)
local key = P .. ':ev:c:' .. sid
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if b == 0 or #last == 0 then return cjson.encode({ msgs = msgs, more = false }) end
-- The log holds the channel's other events between its messages: message
-- i has seq i + 1 + (other events before it), so the messages below
-- `before` sit at or below seq before + (other events so far).
local top = tonumber(string.sub(last[1][1], 3))
local other = others(sid)
local from = '0-' .. math.min(top, b + other)
local found = {}
while #found <= limit do
  local count = limit + 1 - #found + other
  local rows = redis.call('XREVRANGE', key, from, '-', 'COUNT', count)
  for _, row in ipairs(rows) do
    local e = row[2][2]
    -- A message as `post` stores it names the channel's other events
    -- before it, and goes out with its index (as earlier versions stored
    -- it).
    local i
    local o = string.match(e, '^{"t":"msg","o":(%d+),')
    if o then
      i = tonumber(string.sub(row[1], 3)) - 1 - tonumber(o)
      e = '{"t":"msg","i":' .. i .. ',' .. string.sub(e, 17 + #o)
    else
      i = tonumber(string.match(e, '^{"t":"msg","i":(%d+)'))
    end
    if i and i < b then
      found[#found + 1] = e
      if #found > limit then break end
    end
  end
  if #rows < count then break end
  from = '(' .. rows[#rows][1]
end
for i = math.min(#found, limit), 1, -1 do msgs[#msgs + 1] = found[i] end
return cjson.encode({ msgs = msgs, more = #found > limit })
"#;

/// A:1 sid → the channel as the server API shows it.
const CHANNEL_REPORT: &str = r#"
local h = redis.call('HMGET', P .. ':ch:' .. A(1), 'q', 'at', 'form', 's', 'closed', 'ended')
if not h[1] then return 'E:not_found' end
return cjson.encode({
  q = h[1], at = h[2], form = h[3], next = seq_of('c:' .. A(1)) - others(A(1)), closed = (h[5] == '1'),
  ended = tonumber(h[6] or '0'), mem = members(A(1)),
})
"#;

/// A:1 identity → the identity as the server API shows it (sessions on
/// every live node).
const IDENTITY_REPORT: &str = r#"
local h = redis.call('HMGET', P .. ':id:' .. A(1), 'role', 'x', 'eng', 'eat')
if not h[1] then return 'E:not_found' end
return cjson.encode({
  role = h[1], x = (h[2] == '1'), eng = h[3] or '', eat = h[4] or '',
  sessions = live_sum(P .. ':ids:' .. A(1)),
})
"#;

/// A:1 identity. Its sessions on every node are closed (4003) → how many
/// there were.
const DISCONNECT: &str = r#"
local n = live_sum(P .. ':ids:' .. A(1))
emit('i:' .. A(1), '{"t":"disconnect"}')
return tostring(n)
"#;

/// A:1 sid, 2 a `post` call's id (its message's `"c"`), 3 that call's
/// deadline (Redis's time, unix ms), 4 its message's time (the node's,
/// unix ms) → the message's index when the call ran, "wait" when it has
/// not (yet) while it still could (Redis's clock has not passed its
/// deadline), "none" when it did not and never will (a call past its
/// deadline does nothing: `begin`). For a `post` whose answer never came.
/// The log is read from its newest entry back to messages a minute older
/// than the call's (or 10,000 entries).
const SETTLE: &str = r#"
local key = P .. ':ev:c:' .. A(1)
local mark, oldest = '"c":"' .. A(2) .. '","ms":%-?%d+}$', tonumber(A(4)) - 60000
local from, read = '+', 0
while read < 10000 do
  local rows = redis.call('XREVRANGE', key, from, '-', 'COUNT', 100)
  for _, row in ipairs(rows) do
    local e = row[2][2]
    local o = string.match(e, '^{"t":"msg","o":(%d+),')
    if o then
      if string.find(e, mark) then
        return tostring(tonumber(string.sub(row[1], 3)) - 1 - tonumber(o))
      end
      local ms = tonumber(string.match(e, '"ms":(%-?%d+)}$'))
      if ms and ms < oldest then read = 10000 break end
    end
  end
  if #rows < 100 then break end
  read = read + #rows
  from = '(' .. rows[#rows][1]
end
if NOW <= tonumber(A(3)) then return 'wait' end
return 'none'
"#;

/// A:1 a recorded function's call id (see `RECORDED`), 2 that call's
/// deadline → its answer, prefixed with "R", when it ran; "wait" when it
/// has not (yet) while it still could; "none" when it did not and never
/// will.
const SETTLE_CALL: &str = r#"
local answer = redis.call('GET', P .. ':call:' .. A(1))
if answer then return answer end
if NOW <= tonumber(A(2)) then return 'wait' end
return 'none'
"#;

/// A:1 url, 2 lease time (ms), 3 a fresh epoch in case there is none →
/// `<1|0>:<epoch>`: whether this node holds the URL's webhook lease now
/// (taken when free, renewed when its own), and the webhook epoch (event
/// ids are unique across a loss of Redis's data).
const WH_HOLD: &str = r#"
local key = P .. ':wh:lease:' .. A(1)
local holder = redis.call('GET', key)
local held = '0'
if holder == NODE then
  redis.call('PEXPIRE', key, A(2))
  held = '1'
elseif not holder then
  redis.call('SET', key, NODE, 'PX', A(2))
  held = '1'
end
local ek = P .. ':wh:epoch'
local epoch = redis.call('GET', ek)
if not epoch then
  epoch = A(3)
  redis.call('SET', ek, epoch)
end
return held .. ':' .. epoch
"#;

/// A:1 url. Gives the URL's lease up if this node holds it.
const WH_RELEASE: &str = r#"
local key = P .. ':wh:lease:' .. A(1)
if redis.call('GET', key) == NODE then redis.call('DEL', key) end
return 'OK'
"#;

/// A:1 url, 2 seq. The URL accepted every event up to seq: only the
/// lease's holder moves its cursor, and only forward.
const WH_CURSOR: &str = r#"
if redis.call('GET', P .. ':wh:lease:' .. A(1)) ~= NODE then return 'E:lease' end
local ck = P .. ':wh:cursors'
if tonumber(A(2)) > tonumber(redis.call('HGET', ck, A(1)) or '0') then
  redis.call('HSET', ck, A(1), A(2))
end
return 'OK'
"#;

/// A function of the library.
pub(super) struct Function {
    /// Its name in Redis.
    pub name: String,
    /// It takes the common arguments (its deadline, this node's id)
    /// before its own; `post` takes only the deadline (each argument costs
    /// Redis about 1,400 instructions).
    pub common: bool,
    /// It records its answer under its call's id (a third common
    /// argument), for `settle_call`.
    pub recorded: bool,
}

/// The functions that take only their deadline and their own arguments.
const OWN_ARGUMENTS: &[&str] = &["post"];

/// The state changes whose answer, when it is lost, the node asks for
/// again (`settle_call`): each records its answer under its call's id
/// for `CALL_RECORD_MS`, one more write. Not `post` (`settle` finds a
/// message in its channel's log, so that a message costs no second
/// write), nor the changes a client can repeat without harm (a draft, a
/// typing indicator, minimizing) or that belong to a session's own
/// connection.
const RECORDED: &[&str] = &["start", "restart", "end", "join", "leave", "widget"];

/// How long a recorded answer is kept: far longer than a node asks for it.
const CALL_RECORD_MS: u64 = 60_000;

pub(super) struct Scripts {
    pub identify: Function,
    pub attach: Function,
    pub detach: Function,
    pub sessions: Function,
    pub channel: Function,
    pub queue: Function,
    pub start: Function,
    pub restart: Function,
    pub end: Function,
    pub join: Function,
    pub leave: Function,
    pub post: Function,
    pub widget: Function,
    pub draft: Function,
    pub typing: Function,
    pub typing_end: Function,
    pub observe: Function,
    pub unobserve: Function,
    pub history: Function,
    pub channel_report: Function,
    pub identity_report: Function,
    pub disconnect: Function,
    pub reap: Function,
    pub purge: Function,
    pub settle: Function,
    pub settle_call: Function,
    pub wh_hold: Function,
    pub wh_release: Function,
    pub wh_cursor: Function,
    /// The library's source, for `FUNCTION LOAD`.
    pub library: String,
}

/// What the library holds as constants (the same on every node of a
/// cluster, normally; a node configured otherwise loads its own library).
pub(super) struct Settings<'a> {
    pub prefix: &'a str,
    pub event_log_len: u64,
    pub ended_retention_secs: u64,
    /// 0: no post-event webhook.
    pub webhook_events_max: u64,
    pub history_len: u64,
}

/// `s` as a Lua string literal.
fn lua_string(s: &str) -> String {
    let mut out = String::from("'");
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_-:./@#$%^&*+=!?~,;()[]{}<> ".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
    out.push('\'');
    out
}

impl Scripts {
    pub(super) fn new(settings: &Settings<'_>) -> Scripts {
        let bodies = [
            ("identify", IDENTIFY),
            ("attach", ATTACH),
            ("detach", DETACH),
            ("sessions", SESSIONS),
            ("channel", CHANNEL),
            ("queue", QUEUE),
            ("start", START),
            ("restart", RESTART),
            ("end", END),
            ("join", JOIN),
            ("leave", LEAVE),
            ("post", POST),
            ("widget", WIDGET),
            ("draft", DRAFT),
            ("typing", TYPING),
            ("typing_end", TYPING_END),
            ("observe", OBSERVE),
            ("unobserve", UNOBSERVE),
            ("history", HISTORY),
            ("channel_report", CHANNEL_REPORT),
            ("identity_report", IDENTITY_REPORT),
            ("disconnect", DISCONNECT),
            ("reap", REAP),
            ("purge", PURGE),
            ("settle", SETTLE),
            ("settle_call", SETTLE_CALL),
            ("wh_hold", WH_HOLD),
            ("wh_release", WH_RELEASE),
            ("wh_cursor", WH_CURSOR),
        ];
        let config = format!(
            "local CONFIG = {{ prefix = {}, evlen = '{}', ended_ttl = {}, whmax = '{}', histlen = '{}', histmax = {} }}\n",
            lua_string(settings.prefix),
            settings.event_log_len,
            settings.ended_retention_secs,
            settings.webhook_events_max,
            settings.history_len,
            settings.history_len,
        );
        // Each function's body in the library: every call starts with
        // `begin`, which checks the call's deadline (a late call does
        // nothing and answers `E:late:<Redis's time>`). The common
        // arguments before the function's own: the deadline, then (but
        // for `post`) the node's id.
        // A recorded function takes its call's id as a third common
        // argument and keeps its answer under it.
        let functions: Vec<(&str, String)> = bodies
            .iter()
            .map(|(f, body)| {
                let wrapped = if RECORDED.contains(f) {
                    format!(
                        "function(_, args)\nlocal late = begin(args, 3)\n\
                         if late then return string.format('E:late:%d', late) end\n\
                         local answer = (function()\n{body}\nend)()\n\
                         redis.call('SET', P .. ':call:' .. args[3], 'R' .. answer, 'PX', {CALL_RECORD_MS})\n\
                         return answer\nend"
                    )
                } else {
                    let base = if OWN_ARGUMENTS.contains(f) { 1 } else { 2 };
                    format!(
                        "function(_, args)\nlocal late = begin(args, {base})\n\
                         if late then return string.format('E:late:%d', late) end\n{body}\nend"
                    )
                };
                (*f, wrapped)
            })
            .collect();
        let mut hash = Sha256::new();
        hash.update(&config);
        hash.update(PRELUDE);
        for (name, function) in &functions {
            hash.update(name);
            hash.update(function);
        }
        let id: String = hash.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let function_name = |f: &str| format!("switchboard_{id}_{f}");
        let name = |f: &str| Function {
            name: function_name(f),
            common: !OWN_ARGUMENTS.contains(&f),
            recorded: RECORDED.contains(&f),
        };
        let mut library = format!("#!lua name=switchboard_{id}\n{config}{PRELUDE}\n");
        for (f, function) in &functions {
            library.push_str(&format!(
                "redis.register_function('{}', {function})\n",
                function_name(f)
            ));
        }
        Scripts {
            identify: name("identify"),
            attach: name("attach"),
            detach: name("detach"),
            sessions: name("sessions"),
            channel: name("channel"),
            queue: name("queue"),
            start: name("start"),
            restart: name("restart"),
            end: name("end"),
            join: name("join"),
            leave: name("leave"),
            post: name("post"),
            widget: name("widget"),
            draft: name("draft"),
            typing: name("typing"),
            typing_end: name("typing_end"),
            observe: name("observe"),
            unobserve: name("unobserve"),
            history: name("history"),
            channel_report: name("channel_report"),
            identity_report: name("identity_report"),
            disconnect: name("disconnect"),
            reap: name("reap"),
            purge: name("purge"),
            settle: name("settle"),
            settle_call: name("settle_call"),
            wh_hold: name("wh_hold"),
            wh_release: name("wh_release"),
            wh_cursor: name("wh_cursor"),
            library,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_goes_into_the_library_as_a_lua_string() {
        assert_eq!(lua_string("switchboard"), "'switchboard'");
        assert_eq!(lua_string("a'b\\c\n"), "'a\\039b\\092c\\010'");
        assert_eq!(lua_string("é"), "'\\195\\169'");
    }

    #[test]
    fn a_library_is_made_for_one_configuration() {
        let settings = |prefix| Settings {
            prefix,
            event_log_len: 10_000,
            ended_retention_secs: 60,
            webhook_events_max: 0,
            history_len: 100,
        };
        let one = Scripts::new(&settings("one"));
        let two = Scripts::new(&settings("two"));
        assert_ne!(one.post.name, two.post.name);
        assert!(one.library.contains("prefix = 'one'"));
        assert!(!one.post.common && one.start.common);
        // Every function checks its call's deadline first.
        let functions = one.library.matches("redis.register_function(").count();
        assert_eq!(
            one.library.matches("local late = begin(args, ").count(),
            functions
        );
        assert!(one.library.contains("local late = begin(args, 1)\nif late"));
    }
}
