-- Shared by every function of the library. The library is made for one
-- configuration: `CONFIG` (written before this text) holds the key prefix,
-- the event log length, the ended-channel retention (s), the most
-- post-event webhook events kept ("0": no post-event webhook) and the most
-- messages kept per channel (`[history] max_messages`). Each call's
-- arguments: its deadline (Redis's time, unix ms), this node's id, then
-- the function's own (as few as it can: each argument costs Redis about
-- 1,400 instructions); `post` takes its deadline and its own. Keys
-- are built from the prefix (one Redis, not Redis Cluster). These are the
-- library's own variables, set by `begin` at the start of every call:
-- Redis runs one call at a time.
local P, EVLEN, ENDED_TTL, WHMAX, HISTLEN, HISTMAX =
  CONFIG.prefix, CONFIG.evlen, CONFIG.ended_ttl, CONFIG.whmax, CONFIG.histlen, CONFIG.histmax
local ARGV, BASE, NOW, NODE
-- Every call starts here (the library wraps each function's body in it).
-- A call's deadline is the moment its node stops waiting for it, in
-- Redis's time: a call that runs after it (held up while Redis was
-- blocked, slow or paused) was answered `unavailable` by its node
-- ("nothing was done; retry"), so it does nothing at all (no write, no
-- index, no publish) and answers `E:late:<Redis's time>`. `base`: the
-- common arguments before the function's own (2: the deadline and the
-- node's id; 3: those and the call's id, for a function that records its
-- answer; `post`: 1, the deadline). → nil, or Redis's time (unix ms)
-- when the call is late. NOW is Redis's clock (unix ms), one clock for
-- every node's expiries and timestamps (`post` needs none: its webhook
-- event's time comes with it).
--
-- The deadline is unix ms in 13 digits (until the year 2286), so that its
-- seconds compare with TIME's as strings: each conversion of a string to
-- a number costs Redis about 1,400 instructions, and the comparison needs
-- none unless the second is the same.
local function begin(args, base)
  local t = redis.call('TIME')
  local secs, by = t[1], string.sub(args[1], 1, -4)
  if secs >= by and (secs > by or tonumber(t[2]) >= 1000 * (tonumber(string.sub(args[1], -3)) + 1)) then
    return t[1] * 1000 + math.floor(t[2] / 1000)
  end
  ARGV, BASE = args, base
  if base >= 2 then
    NOW, NODE = t[1] * 1000 + math.floor(t[2] / 1000), args[2]
  else
    NOW, NODE = nil, nil
  end
end
local function A(n) return ARGV[BASE + n] end
local function q(s) return cjson.encode(s) end

-- What `post` needs of a channel, in one field of its hash (`s`), since
-- each field read costs Redis about 1,500 instructions: how many events of
-- the channel's log are not messages (a message's index is its seq - 1 -
-- that count, so that a message needs no counter of its own), then ":<n>"
-- while n typing periods in the channel are due (`ty:due`), "f" once its
-- log has reached the history's cap (appends then trim it as they go), and
-- "x" before all once the channel is closed. A plain number: an open
-- channel where nobody types, whose log is below the cap.
local function seq_of(topic)
  local key = P .. ':ev:' .. topic
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last > 0 then return tonumber(string.sub(last[1][1], 3)) end
  -- A log emptied by age retention still knows its last seq (only a log
  -- that never was has none).
  if redis.call('EXISTS', key) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info - 1, 2 do
    if info[i] == 'last-generated-id' then return tonumber(string.sub(info[i + 1], 3)) end
  end
  return 0
end

-- A channel written by a build before `s` (which counted its messages in
-- `next` and kept its members in `chm:<sid>` only) gets `s` and its `m:`
-- fields from what it has → its `s`, nil when there is no such channel.
local function migrate(sid)
  local ch = P .. ':ch:' .. sid
  local h = redis.call('HMGET', ch, 'q', 'closed', 'next')
  if not h[1] then return nil end
  local seq = seq_of('c:' .. sid)
  local s = tostring(seq - tonumber(h[3] or '0'))
  local ty, prefix = 0, sid .. '|'
  for _, entry in ipairs(redis.call('ZRANGE', P .. ':ty:due', 0, -1)) do
    if string.sub(entry, 1, #prefix) == prefix then ty = ty + 1 end
  end
  if ty > 0 then s = s .. ':' .. ty end
  if seq >= HISTMAX then s = s .. 'f' end
  if h[2] == '1' then s = 'x' .. s end
  local flat = redis.call('HGETALL', P .. ':chm:' .. sid)
  for i = 1, #flat, 2 do redis.call('HSET', ch, 'm:' .. flat[i], '1') end
  redis.call('HSET', ch, 's', s)
  return s
end

local function state_of(sid, s)
  s = s or redis.call('HGET', P .. ':ch:' .. sid, 's') or migrate(sid)
  if not s then return nil end
  local x, o, ty, f = string.match(s, '^(x?)(%d+):?(%d*)(f?)$')
  return tonumber(o), tonumber(ty) or 0, x == 'x', f == 'f'
end

-- Changes a channel's `s` (none when the channel is gone): `others` and
-- `typing` added, `mark` "x" (closed) or "f" (full) set; `s`: its value
-- when the caller has just read it.
local function add_state(sid, others, typing, mark, s)
  local o, ty, closed, full = state_of(sid, s)
  if not o then return end
  o, ty = o + others, ty + typing
  s = tostring(o)
  if ty > 0 then s = s .. ':' .. ty end
  if full or mark == 'f' then s = s .. 'f' end
  if closed or mark == 'x' then s = 'x' .. s end
  redis.call('HSET', P .. ':ch:' .. sid, 's', s)
end

-- The count of a channel's events that are not messages.
local function others(sid)
  return (state_of(sid)) or 0
end

-- A sequenced event: appended to the topic's event log (entry id 0-<seq>)
-- and published as "<seq>|<json>" (`log`). A channel's log is also its
-- history (its messages are stored there only), so it is capped as history
-- is, exactly; other topics' logs keep about EVLEN events. An event a
-- post-event webhook receives (each push from one topic only, as the
-- embedded engine takes them) is also appended to the webhook outbox,
-- atomically with the action (`to_webhooks`). Messages are `post`'s own.
local function log(topic, json)
  local key = P .. ':ev:' .. topic
  local id
  if string.byte(topic, 1) == 99 then -- 'c'
    id = redis.call('XADD', key, 'MAXLEN', HISTLEN, '0-*', 'e', json)
  else
    id = redis.call('XADD', key, 'MAXLEN', '~', EVLEN, '0-*', 'e', json)
  end
  local seq = string.sub(id, 3)
  redis.call('PUBLISH', key, seq .. '|' .. json)
  return seq
end

local function to_webhooks(topic, json)
  redis.call('XADD', P .. ':wh:events', 'MAXLEN', '~', WHMAX, '0-*', 'k', topic, 'ms', NOW, 'e', json)
end

local function emit(topic, json)
  local kind = string.sub(topic, 1, 1)
  if kind == 'c' then add_state(string.sub(topic, 3), 1, 0) end
  local seq = log(topic, json)
  if WHMAX ~= '0' then
    local t = string.match(json, '^{"t":"(%a+)"')
    if (kind == 'c' and (t == 'joined' or t == 'left'))
        or (kind == 'q' and (t == 'started' or t == 'ended'))
        or (kind == 'i' and t == 'restarted') then
      to_webhooks(topic, json)
    end
  end
  return tonumber(seq)
end

-- A transient event (typing): published only.
local function transient(topic, json)
  redis.call('PUBLISH', P .. ':ev:' .. topic, '-|' .. json)
end

-- The sum of a per-node count hash over live nodes (a dead node's counts
-- are dropped: its heartbeat key expired).
local function live_sum(key)
  local flat = redis.call('HGETALL', key)
  local sum = 0
  for i = 1, #flat, 2 do
    if redis.call('EXISTS', P .. ':node:' .. flat[i]) == 1 then
      sum = sum + tonumber(flat[i + 1])
    else
      redis.call('HDEL', key, flat[i])
    end
  end
  return sum
end

local function members(sid)
  local flat = redis.call('HGETALL', P .. ':chm:' .. sid)
  local list = {}
  for i = 1, #flat, 2 do list[#list + 1] = { identity = flat[i], role = flat[i + 1] } end
  table.sort(list, function(a, b) return a.identity < b.identity end)
  return list
end

local function members_json(sid)
  local list = members(sid)
  local parts = {}
  for i, m in ipairs(list) do
    parts[i] = '{"identity":' .. q(m.identity) .. ',"role":' .. q(m.role) .. '}'
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

local function updated(sid)
  return '{"t":"updated","sid":' .. q(sid) .. ',"mem":' .. members_json(sid) .. '}'
end

local function channel_state(sid)
  local h = redis.call('HMGET', P .. ':ch:' .. sid, 's', 'closed', 'q')
  local seq = seq_of('c:' .. sid)
  return {
    sid = sid,
    seq = seq,
    next = h[3] and seq - others(sid) or 0,
    closed = (h[2] == '1'),
    exists = (h[3] ~= false),
    mem = members(sid),
  }
end

-- Typing periods not yet announced as ended, by when they are due to end
-- (`ty:due`, members `<sid>|<identity>`): the node that began a period ends
-- it on time; when that node is gone, any node ends it (`REAP`).
local function typing_due(sid, id)
  return P .. ':ty:due', sid .. '|' .. id
end

-- A typing period is due to end at `at` (the channel counts its due
-- periods in `s`).
local function set_due(sid, id, at, s)
  if redis.call('ZADD', P .. ':ty:due', at, sid .. '|' .. id) == 1 then add_state(sid, 0, 1, nil, s) end
end

local function undue(sid, id, s)
  if redis.call('ZREM', typing_due(sid, id)) == 1 then
    add_state(sid, 0, -1, nil, s)
    return true
  end
  return false
end

-- Ends a typing period now: a live one, or one whose window has passed
-- before its timer's call came (still due: its end not yet announced). The
-- key stays a while as "ended", so that the timer of the node that began
-- the period does not announce its end again (a node whose message ended
-- it stops its own timer). `s`: the channel's, when the caller has just
-- read it.
local function end_typing(sid, id, s)
  local key = P .. ':ty:' .. sid .. ':' .. id
  local token = redis.call('GET', key)
  if token == 'ended' then return end
  if token then
    undue(sid, id, s)
  elseif not undue(sid, id, s) then
    return
  end
  redis.call('SET', key, 'ended', 'PX', 60000)
  transient('c:' .. sid, '{"t":"typing_off","sid":' .. q(sid) .. ',"id":' .. q(id) .. '}')
end

-- An identity with no session on a live node, no channel and no
-- engagement is forgotten after `ttl` seconds (an anonymous customer's
-- resume token then gives a fresh identity).
local function forget_if_idle(id, ttl)
  if live_sum(P .. ':ids:' .. id) == 0 and redis.call('SCARD', P .. ':idc:' .. id) == 0
      and not redis.call('HGET', P .. ':id:' .. id, 'eng') then
    for _, k in ipairs({ P .. ':id:' .. id, P .. ':idd:' .. id }) do redis.call('EXPIRE', k, ttl) end
    redis.call('ZADD', P .. ':anon', 'XX', NOW + 1000 * tonumber(ttl), id)
  end
end

local function abandoned(sid)
  return redis.call('HLEN', P .. ':chm:' .. sid) == 0 and live_sum(P .. ':cho:' .. sid) == 0
end

-- The channel takes nothing more; its keys go after the retention.
local function retire(sid)
  local ch = P .. ':ch:' .. sid
  redis.call('HSET', ch, 'closed', '1', 'ended', NOW)
  add_state(sid, 0, 0, 'x')
  local queue = redis.call('HGET', ch, 'q')
  if queue then redis.call('ZREM', P .. ':q:' .. queue, sid) end
  emit('c:' .. sid, '{"t":"closed"}')
  for _, k in ipairs({ ch, P .. ':chm:' .. sid, P .. ':cho:' .. sid, P .. ':ev:c:' .. sid }) do
    redis.call('EXPIRE', k, ENDED_TTL)
  end
end

-- Takes an identity out of a channel: one memberLeft after every message
-- already accepted (scripts run one at a time). `ending`: the channel is
-- being ended for everyone (no per-member updates, retired once after).
local function remove(id, sid, reason, ended_reason, tell, ending)
  if redis.call('SREM', P .. ':idc:' .. id, sid) == 0 then return false end
  redis.call('HDEL', P .. ':idd:' .. id, sid)
  local idk = P .. ':id:' .. id
  local is_eng = redis.call('HGET', idk, 'eng') == sid
  if is_eng then redis.call('HDEL', idk, 'eng', 'eat') end
  local ch = P .. ':ch:' .. sid
  local queue = redis.call('HGET', ch, 'q')
  if redis.call('HDEL', P .. ':chm:' .. sid, id) == 1 then
    redis.call('HDEL', ch, 'm:' .. id)
    end_typing(sid, id)
    local left = '{"t":"left","sid":' .. q(sid) .. ',"id":' .. q(id) .. ',"why":' .. q(reason) .. '}'
    emit('c:' .. sid, left)
    -- Removed by the server: its own sessions did not ask, so they are
    -- told too (after the channel stops reaching them).
    if reason == 'removed' then emit('i:' .. id, left) end
    local closed = redis.call('HGET', ch, 'closed') == '1'
    if not is_eng and not closed and not ending and queue then
      emit('q:' .. queue, updated(sid))
    end
    if not closed and not ending and abandoned(sid) then retire(sid) end
  end
  if is_eng or tell then
    local ended = '{"t":"ended","sid":' .. q(sid) .. ',"why":' .. q(ended_reason) .. '}'
    if is_eng and queue then
      redis.call('ZREM', P .. ':q:' .. queue, sid)
      emit('q:' .. queue, ended)
    end
    if reason == 'restart' then
      emit('i:' .. id, '{"t":"restarted","sid":' .. q(sid) .. '}')
    else
      emit('i:' .. id, ended)
    end
  end
  return true
end
