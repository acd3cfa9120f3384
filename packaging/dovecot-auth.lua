-- Dovecot 2.4's passdb and userdb through miab-authd (Dovecot 2.4 has no checkpassword).
-- `miabctl sidecars enable` points /etc/dovecot/conf.d/00-miab-sidecars.conf at this file.
--
-- It speaks the same exchange miab-checkpassword speaks on 2.3, on the same socket
-- (lua_settings { socket = ... }, default /run/miab-authd/checkpassword): Dovecot's
-- auth-client lines, one AUTH PLAIN to check a password, one USER to look a user up. So
-- IMAP and POP3 logins get what SMTP AUTH gets: app passwords ("app passwords required"
-- too), suspension, the brake with its known devices, the success cache, the same log lines.
--
-- Answers: OK -> the canonical address and the userdb fields (prefetched by the next
-- userdb); a refusal -> password mismatch; miab-authd away, the DB locked, a reply it does
-- not understand -> internal failure, so Dovecot answers "temporary failure", never "wrong
-- password". The password never leaves this function except base64'd to miab-authd, and is
-- never logged.
--
-- Blocking socket I/O: the passdb and userdb run in auth-worker processes
-- (passdb_use_worker / userdb_use_worker), never in the auth process itself.

local unix = require("socket.unix")

local socket_path = "/run/miab-authd/checkpassword"
local timeout = 10
local max_line = 65536

function script_init(args)
  if args ~= nil and args["socket"] ~= nil and args["socket"] ~= "" then
    socket_path = args["socket"]
  end
  if args ~= nil and tonumber(args["timeout"]) ~= nil then
    timeout = tonumber(args["timeout"])
  end
  return 0
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {
      (n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63,
    }
    out[#out + 1] = b64chars:sub(q[1] + 1, q[1] + 1) .. b64chars:sub(q[2] + 1, q[2] + 1)
      .. (b and b64chars:sub(q[3] + 1, q[3] + 1) or "=")
      .. (c and b64chars:sub(q[4] + 1, q[4] + 1) or "=")
  end
  return table.concat(out)
end

-- Dovecot's tab escaping (\001 followed by a letter).
local function escape(s)
  return (tostring(s or ""):gsub("[%z\1\t\r\n]", {
    ["\0"] = "\0010", ["\1"] = "\0011", ["\t"] = "\001t", ["\r"] = "\001r", ["\n"] = "\001n",
  }))
end

local function unescape(s)
  return (s:gsub("\001(.)", { ["0"] = "\0", ["1"] = "\1", t = "\t", r = "\r", n = "\n" }))
end

-- One line from `c`, without its newline, at most max_line bytes (LuaSocket's own "*l" has
-- no bound); nil and why otherwise.
local function read_line(c)
  local buf = {}
  for i = 1, max_line + 1 do
    local ch, e = c:receive(1)
    if ch == nil then
      return nil, e
    end
    if ch == "\n" then
      return table.concat(buf)
    end
    buf[i] = ch
  end
  return nil, "over-long line"
end

-- Sends `line` after the handshake and returns the reply's fields, or nil and why.
local function ask(line)
  local c = unix.stream and unix.stream() or unix()
  if c == nil then
    return nil, "no UNIX socket"
  end
  c:settimeout(timeout)
  local ok, err = c:connect(socket_path)
  if not ok then
    c:close()
    return nil, "connect " .. socket_path .. ": " .. tostring(err)
  end
  for _ = 1, 64 do
    local l, e = read_line(c)
    if l == nil then
      c:close()
      return nil, "handshake: " .. tostring(e)
    end
    if l == "DONE" then
      break
    end
  end
  ok, err = c:send("VERSION\t1\t2\nCPID\t0\n" .. line .. "\n")
  if not ok then
    c:close()
    return nil, "send: " .. tostring(err)
  end
  local reply, e = read_line(c)
  c:close()
  if reply == nil then
    return nil, "reply: " .. tostring(e)
  end
  local parts = {}
  for p in (reply .. "\t"):gmatch("([^\t]*)\t") do
    parts[#parts + 1] = p
  end
  return parts
end

-- MIAB's quota (users.quota: "0", "500M", "5G", ...) as Dovecot 2.4 takes it: the limit, and
-- a grace of a tenth of it in bytes (2.3's global quota_grace = 10%; 2.4's
-- quota_storage_grace takes only a size), computed as SQLite computes the translated
-- user_query: the leading integer times the unit, divided by 10.
local function quota_fields(f, prefix, q)
  f[prefix .. "quota_storage_size"] = q
  local n = tonumber(q:match("^(%d+)")) or 0
  local unit = ({ G = 1073741824, M = 1048576 })[q:sub(-1)] or 1
  f[prefix .. "quota_storage_grace"] = string.format("%d", (n * unit) // 10)
end

-- The userdb fields MIAB's user_query gives, in Dovecot 2.4's names (the quota rule
-- "*:bytes=N" became quota_storage_size and quota_storage_grace).
local function fields_of(parts, from, prefix)
  local f = {}
  for i = from, #parts do
    local k, v = parts[i]:match("^([%w_]+)=(.*)$")
    if k ~= nil then
      v = unescape(v)
      if k == "quota_rule" then
        local bytes = v:match("^%*:bytes=(.+)$")
        if bytes ~= nil then
          quota_fields(f, prefix, bytes)
        end
      elseif k == "user" then
        f["user"] = v
      elseif k ~= "temp" then
        f[prefix .. k] = v
      end
    end
  end
  return f
end

local function params(req)
  local p = "\tservice=" .. escape(req.service ~= nil and req.service ~= "" and req.service or "imap")
  if req.local_ip ~= nil and req.local_ip ~= "" then
    p = p .. "\tlip=" .. escape(req.local_ip)
  end
  if req.remote_ip ~= nil and req.remote_ip ~= "" then
    p = p .. "\trip=" .. escape(req.remote_ip)
  end
  return p
end

function auth_password_verify(req, pass)
  -- Dovecot has applied auth_allow_cleartext before asking: the line says "secured".
  local resp = base64("\0" .. req.user .. "\0" .. pass)
  local parts, err = ask("AUTH\t1\tPLAIN" .. params(req) .. "\tsecured\tnologin\tresp=" .. resp)
  if parts == nil then
    req:log_warning("miab-authd unavailable: " .. err)
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "miab-authd unavailable"
  end
  if parts[1] == "OK" then
    local f = fields_of(parts, 3, "userdb_")
    if f["user"] == nil then
      return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "miab-authd sent OK without user"
    end
    return dovecot.auth.PASSDB_RESULT_OK, f
  end
  if parts[1] == "FAIL" then
    for i = 3, #parts do
      if parts[i] == "temp" or parts[i] == "code=temp_fail" then
        return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "miab-authd: temporary failure"
      end
    end
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, ""
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "miab-authd sent an unexpected reply"
end

-- Credentials are never handed out (no CRAM-MD5 and the like, as on MIAB).
function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE, ""
end

function auth_userdb_lookup(req)
  local line = "USER\t1\t" .. escape(req.user) .. "\tservice="
    .. escape(req.service ~= nil and req.service ~= "" and req.service or "imap")
  local parts, err = ask(line)
  if parts == nil then
    req:log_warning("miab-authd unavailable: " .. err)
    return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, "miab-authd unavailable"
  end
  if parts[1] == "USER" and parts[3] ~= nil and parts[3] ~= "" then
    local f = fields_of(parts, 4, "")
    f["user"] = unescape(parts[3])
    return dovecot.auth.USERDB_RESULT_OK, f
  end
  if parts[1] == "NOTFOUND" then
    return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, ""
  end
  return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, "miab-authd sent an unexpected reply"
end

-- Listing is left to the SQL userdb behind this one (miab-authd does not list users).
function auth_userdb_iterate()
  return {}
end
