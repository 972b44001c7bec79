// Drives real @snazzah/davey DAVESession objects for the Rust interop test.
//
// Protocol: one JSON object per line on stdin, one JSON reply per line on
// stdout. Binary values are hex strings. Every reply is {ok:true, ...} or
// {ok:false, error:"..."}; the driver never exits on a davey error.
//
// Location of davey: $DAVEY_PATH, else the copy installed for the interop
// tests (npm ci --prefix control/tests/interop).
'use strict';
const readline = require('readline');

const DAVEY_PATH =
  process.env.DAVEY_PATH ||
  require('path').join(__dirname, 'node_modules/@snazzah/davey');
const Davey = require(DAVEY_PATH);

const sessions = new Map(); // name -> DAVESession
const hex = (b) => (b ? Buffer.from(b).toString('hex') : null);
const buf = (h) => Buffer.from(h, 'hex');
const get = (name) => {
  const s = sessions.get(name);
  if (!s) throw new Error(`no session ${name}`);
  return s;
};

const handlers = {
  info: () => ({ version: Davey.VERSION, dave: Davey.DAVE_PROTOCOL_VERSION }),
  // new DAVESession(protocolVersion, userId, channelId) + its key package (op 26)
  create: ({ name, userId, channelId }) => {
    const s = new Davey.DAVESession(1, String(userId), String(channelId));
    sessions.set(name, s);
    return { keyPackage: hex(s.getSerializedKeyPackage()) };
  },
  // op 25 payload as-is
  setExternalSender: ({ name, payload }) => {
    get(name).setExternalSender(buf(payload));
    return {};
  },
  // op 27 payload exactly as @discordjs/voice does it: first byte is the
  // operation type, the rest (the <V> vector, length prefix included) is
  // passed as `proposals`.
  processProposals: ({ name, payload, userIds }) => {
    const p = buf(payload);
    const r = get(name).processProposals(p.readUInt8(0), p.subarray(1), userIds);
    return { commit: hex(r.commit), welcome: hex(r.welcome) };
  },
  // op 29 body minus the u16 transition id: the MLSMessage commit
  processCommit: ({ name, commit }) => {
    get(name).processCommit(buf(commit));
    return {};
  },
  // op 30 body minus the u16 transition id: the raw Welcome
  processWelcome: ({ name, welcome }) => {
    get(name).processWelcome(buf(welcome));
    return {};
  },
  state: ({ name }) => {
    const s = get(name);
    return {
      ready: s.ready,
      status: s.status,
      epoch: s.epoch === null || s.epoch === undefined ? null : Number(s.epoch),
      leaf: s.ownLeafIndex,
      userIds: s.getUserIds(),
      privacyCode: s.voicePrivacyCode,
    };
  },
  encryptOpus: ({ name, frame }) => ({ frame: hex(get(name).encryptOpus(buf(frame))) }),
  decrypt: ({ name, userId, frame }) => ({
    frame: hex(get(name).decrypt(String(userId), Davey.MediaType.AUDIO, buf(frame))),
  }),
};

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let reply;
  try {
    const req = JSON.parse(line);
    const h = handlers[req.cmd];
    if (!h) throw new Error(`unknown cmd ${req.cmd}`);
    reply = { ok: true, ...h(req) };
  } catch (e) {
    reply = { ok: false, error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(reply) + '\n');
});
