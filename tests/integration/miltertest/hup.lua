-- hup.lua - one message signed by tom (big/tom-5k.eml), whose verdict must
-- be want ("pass" or "untrusted"): run before and after kmsd reloads
-- without tom's trust anchor, on a new connection each time, so that a
-- chain result kmsd cached under the old anchors is seen not to outlive
-- them.
--   miltertest -D sock=... -D dir=... -D big=DIR -D want=pass|untrusted -s hup.lua

dofile(dir .. "/kms.lua")
data = big

local conn = kms.connect()
local reply = kms.send(conn, "tom-5k.eml", "HUP1")
local ar = kms.added(conn, "Authentication-Results")
local word = want == "pass" and "smime=pass (pass" or "smime=neutral (untrusted"
kms.expect(kms.accepted(reply), "tom-5k.eml: accepted")
kms.expect(ar ~= nil and ar:find(word, 1, true) ~= nil, "tom-5k.eml: A-R says " .. want .. " (" .. tostring(ar) .. ")")
reply = kms.send(conn, "tom-5k.eml", "HUP2")
ar = kms.added(conn, "Authentication-Results")
kms.expect(ar ~= nil and ar:find(word, 1, true) ~= nil, "tom-5k.eml again: A-R says " .. want)
mt.disconnect(conn)
kms.finish()
