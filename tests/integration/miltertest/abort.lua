-- abort.lua - a message aborted in the middle (after some headers, after
-- part of the body) leaves nothing behind: the next message on the same
-- connection gets its own verdict.
--   miltertest -D sock=... -D data=... -D dir=... -s abort.lua

dofile(dir .. "/kms.lua")

local conn = kms.connect()

-- Aborted after the header block and half of the body.
local body = kms.start(conn, "dave-revoked.eml", "ABORT1")
kms.body(conn, body:sub(1, #body // 2))
kms.check(mt.abort(conn), "abort")

-- Aborted after the envelope only.
kms.check(mt.mailfrom(conn, "<x@example.org>"), "mailfrom")
kms.check(mt.abort(conn), "abort")

-- The next message on the same connection.
local reply = kms.send(conn, "alice-detached.eml", "ABORT2")
local ar = kms.added(conn, "Authentication-Results")
kms.expect(kms.accepted(reply), "after abort: accepted")
kms.expect(ar ~= nil and ar:find("smime=pass", 1, true) ~= nil, "after abort: the new message passes")
kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "after abort: nothing of the aborted message")
mt.disconnect(conn)

-- A connection dropped mid-message.
conn = kms.connect()
kms.start(conn, "alice-detached.eml", "ABORT3")
mt.disconnect(conn, false)

-- kmsd still answers.
conn = kms.connect()
reply = kms.send(conn, "alice-detached.eml", "ABORT4")
kms.expect(kms.accepted(reply), "after a dropped connection: kmsd still answers")
mt.disconnect(conn)

kms.finish()
