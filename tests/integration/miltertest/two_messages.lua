-- two_messages.lua - several messages on one connection (RSET between
-- them is an abort to the milter): each gets its own verdict and actions.
--   miltertest -D sock=... -D data=... -D dir=... -s two_messages.lua

dofile(dir .. "/kms.lua")

local conn = kms.connect()

local reply = kms.send(conn, "dave-revoked.eml", "TWO1")
kms.expect(kms.accepted(reply), "first (revoked): accepted")
kms.expect(mt.eom_check(conn, MT_BODYCHANGE), "first (revoked): wrapped")

reply = kms.send(conn, "alice-detached.eml", "TWO2")
local ar = kms.added(conn, "Authentication-Results")
kms.expect(kms.accepted(reply), "second (pass): accepted")
kms.expect(ar ~= nil and ar:find("smime=pass", 1, true) ~= nil, "second: its own verdict")
kms.expect(not mt.eom_check(conn, MT_BODYCHANGE), "second: not wrapped")
kms.expect(not mt.eom_check(conn, MT_HDRADD, "X-KMS-Warning"), "second: no warning")

reply = kms.send(conn, "unsigned.eml", "TWO3")
kms.expect(kms.accepted(reply), "third (unsigned): accepted")
kms.expect(not mt.eom_check(conn, MT_HDRADD) and not mt.eom_check(conn, MT_HDRINSERT), "third: no header")

mt.disconnect(conn)
kms.finish()
