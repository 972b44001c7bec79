// Interop client: @discordjs/voice joins a call on this voice server through
// its public API (joinVoiceChannel with a custom adapter), sends Opus frames
// (StreamType.Opus, no encoder) and records what it receives from one peer
// through VoiceReceiver. Driven by control/tests/interop_discordjs.rs.
//
// Parameters: one JSON object, from argv[2] or the DISCORDJS_PARAMS env var:
//   endpoint       "host:port" of the voice gateway (discord.js builds
//                  wss://{endpoint}?v=8 from it, as from VOICE_SERVER_UPDATE)
//   guild_id       the server_id (guild) of the call
//   channel_id     the voice channel
//   user_id        this client's user id
//   session_id     VOICE_STATE_DONE.session_id from LVSP
//   token          CHANNEL_ASSIGN.token from LVSP
//   frames         Opus frames to send, hex strings, in order
//   peer_user_id   the member whose frames must be received
//   silence_ms     quiet time that ends the receive stream (default 1000)
//   timeout_ms     hard limit for the whole run (default 25000)
//   announce       true: send Speaking (op 5) once Ready, before waiting
//                  for the peer's (two discord.js members wait for each
//                  other's otherwise)
//   dave           true: the server negotiates DAVE (--dave on); wait until
//                  the library's DAVE session is ready at protocol version 1
//                  (the MLS group formed, the transition executed) before
//                  saying "ready", so every frame sent is end-to-end
//                  encrypted and every frame received is decrypted by it
//   scenario       "session": after "ready", obey JSON commands on stdin,
//                  one per line, each answered on stdout: {"cmd":"play",
//                  "frames":[hex]} → {"event":"played"} once sent;
//                  {"cmd":"collect","user_id","count","timeout_ms"} → the
//                  frames received from that member since the last collect
//                  ({"event":"collected","frames":[hex]}, after `count` or
//                  the timeout); {"cmd":"dave","version","timeout_ms"} →
//                  waits until the DAVE session runs `version` (1: ready,
//                  no transition pending) → {"event":"dave",...};
//                  {"cmd":"leave"} → connection.destroy() and exit 0.
//                  Receives from every member in peer_user_ids (a list).
//   scenario       "call" (default): send the frames, receive the peer's,
//                  then connection.destroy(); "udp_loss": once Ready, the
//                  UDP socket closes as when it fails, and discord.js must
//                  resume on a new websocket (it closes the old one with
//                  1000); prints {"event":"resumed",...} and destroys
// Set DISCORDJS_DEBUG=1 for @discordjs/voice's debug log on stderr.
//
// Stdout gets JSON lines: {"event":"ready",...} once the connection is Ready
// and the peer's SSRC is known (the driver starts sending then), and
// {"event":"result",...} at the end. Exit 0 on success; on failure or
// timeout a message on stderr and a non-zero exit.

import { Readable } from 'node:stream';
import {
	AudioPlayerStatus,
	EndBehaviorType,
	NoSubscriberBehavior,
	StreamType,
	VoiceConnectionStatus,
	createAudioPlayer,
	createAudioResource,
	entersState,
	joinVoiceChannel,
	version as discordjsVoiceVersion,
} from '@discordjs/voice';

const params = JSON.parse(process.argv[2] ?? process.env.DISCORDJS_PARAMS ?? 'null');
if (!params || typeof params !== 'object') {
	console.error('discordjs_client: pass the parameters as JSON in argv[2] or DISCORDJS_PARAMS');
	process.exit(2);
}
const required = ['endpoint', 'guild_id', 'channel_id', 'user_id', 'session_id', 'token'];
if (params.scenario !== 'session') required.push('peer_user_id');
for (const key of required) {
	if (typeof params[key] !== 'string') {
		console.error(`discordjs_client: parameter ${key} must be a string`);
		process.exit(2);
	}
}
const frames = (params.frames ?? []).map((hex) => Buffer.from(hex, 'hex'));
const silenceMs = params.silence_ms ?? 1000;
const timeoutMs = params.timeout_ms ?? 25_000;
const scenario = params.scenario ?? 'call';
const debug = process.env.DISCORDJS_DEBUG === '1';

function emit(event) {
	process.stdout.write(`${JSON.stringify(event)}\n`);
}

let connection;
function fail(message) {
	console.error(`discordjs_client: ${message}`);
	try {
		connection?.destroy();
	} catch {}
	process.exit(1);
}

const deadline = setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs);

// The adapter stands in for the Discord main gateway: the join (op 4) it is
// asked to send is answered with the VOICE_STATE_UPDATE and
// VOICE_SERVER_UPDATE a real gateway would dispatch, filled with what the
// test obtained over LVSP. Anything else sent through it is recorded only.
let joins = 0;
function adapterCreator(methods) {
	return {
		sendPayload(payload) {
			if (payload?.op === 4 && payload.d?.channel_id) {
				joins += 1;
				if (joins > 1) {
					// @discordjs/voice rejoins when the voice websocket closed
					// with a code it does not resume from: a failure here.
					setImmediate(() => fail(`@discordjs/voice asked to rejoin (attempt ${joins})`));
					return true;
				}
				setImmediate(() => {
					methods.onVoiceStateUpdate({
						guild_id: params.guild_id,
						channel_id: params.channel_id,
						user_id: params.user_id,
						session_id: params.session_id,
						deaf: false,
						mute: false,
						self_deaf: false,
						self_mute: false,
						self_video: false,
						suppress: false,
						request_to_speak_timestamp: null,
					});
					methods.onVoiceServerUpdate({
						token: params.token,
						guild_id: params.guild_id,
						endpoint: params.endpoint,
					});
				});
			}
			return true;
		},
		destroy() {},
	};
}

function networkingState() {
	return connection?.state?.networking?.state;
}

function waitFor(what, predicate, ms) {
	return new Promise((resolve, reject) => {
		const started = Date.now();
		const tick = () => {
			const value = predicate();
			if (value !== undefined && value !== null && value !== false) return resolve(value);
			if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
			setTimeout(tick, 10);
		};
		tick();
	});
}

async function main() {
	// @discordjs/voice loads its XChaCha20 library (@noble/ciphers)
	// asynchronously when it is first imported and encrypts with a stub
	// that throws until then. Against a server on loopback the connection
	// is Ready within milliseconds, sooner than that load: finish it first.
	await import('@noble/ciphers/chacha.js');
	await new Promise((resolve) => setTimeout(resolve, 100));
	connection = joinVoiceChannel({
		channelId: params.channel_id,
		guildId: params.guild_id,
		adapterCreator,
		selfDeaf: false,
		selfMute: false,
		debug,
	});
	if (debug) connection.on('debug', (m) => console.error(`[voice] ${m}`));
	connection.on('error', (error) => fail(`connection error: ${error?.stack ?? error}`));
	connection.on('stateChange', (_old, next) => {
		if (next.status === VoiceConnectionStatus.Disconnected) {
			fail(`connection disconnected (reason ${next.reason}, close code ${next.closeCode})`);
		}
	});

	try {
		await entersState(connection, VoiceConnectionStatus.Ready, 10_000);
	} catch (error) {
		fail(`the connection did not become Ready: ${error?.message ?? error}`);
	}
	const data = networkingState()?.connectionData ?? {};

	// Two discord.js members each wait for the other's Speaking before
	// they play: say it first (the player says it again when it plays).
	if (params.announce) connection.setSpeaking(true);
	if (scenario === 'session') {
		await session();
		return;
	}

	// Receive: VoiceReceiver maps SSRC → user only from Speaking op 5.
	const received = [];
	const stream = connection.receiver.subscribe(params.peer_user_id, {
		end: { behavior: EndBehaviorType.AfterSilence, duration: silenceMs },
	});
	stream.on('data', (packet) => received.push(Buffer.from(packet).toString('hex')));
	const receiveDone = new Promise((resolve, reject) => {
		stream.once('end', resolve);
		stream.once('close', resolve);
		stream.once('error', reject);
	});
	let peerSsrc;
	try {
		peerSsrc = await waitFor(
			`a Speaking op 5 naming ${params.peer_user_id}`,
			() => connection.receiver.ssrcMap.get(params.peer_user_id)?.audioSSRC,
			5_000,
		);
	} catch (error) {
		fail(error.message);
	}

	if (params.dave) {
		try {
			await waitFor(
				'the DAVE session at protocol version 1',
				() => {
					const dave = networkingState()?.dave;
					return dave?.protocolVersion === 1 && dave.session?.ready && dave.pendingTransitions.size === 0;
				},
				15_000,
			);
		} catch (error) {
			fail(error.message);
		}
	}

	emit({
		event: 'ready',
		ssrc: data.ssrc,
		mode: data.encryptionMode,
		peer_ssrc: peerSsrc,
		dave_protocol_version: networkingState()?.dave?.protocolVersion ?? null,
		dave_epoch: networkingState()?.dave?.session?.epoch?.toString() ?? null,
	});

	if (scenario === 'udp_loss') {
		await loseUdp();
		return;
	}

	const { resource, played } = play(frames);
	await played;
	await receiveDone;
	// Round-trip time of the last heartbeat the gateway acknowledged
	// (undefined if none was).
	const wsPing = connection.ping.ws;

	emit({
		event: 'result',
		discordjs_voice: discordjsVoiceVersion,
		node: process.version,
		ssrc: data.ssrc,
		mode: data.encryptionMode,
		dave_protocol_version: networkingState()?.dave?.protocolVersion ?? null,
		peer_ssrc: peerSsrc,
		ws_ping: wsPing ?? null,
		sent: frames.length,
		silence_padding_frames: resource.silencePaddingFrames,
		received,
	});
	clearTimeout(deadline);
	connection.destroy();
	// Give the websocket close frame a moment, then leave even if a timer
	// (heartbeat, UDP keepalive) is still pending.
	setTimeout(() => process.exit(0), 200).unref();
}

/// The DAVE state as the library sees it.
function daveState() {
	const dave = networkingState()?.dave;
	return {
		version: dave?.protocolVersion ?? null,
		ready: dave?.session?.ready ?? false,
		epoch: dave?.session?.epoch?.toString() ?? null,
		pending: dave?.pendingTransitions?.size ?? 0,
	};
}

// Plays `frames` (Opus, as they are, one per 20 ms tick; all are buffered
// in the stream before playback so no tick finds it empty: an empty tick
// would send a silence frame in the middle). Returns the resource and a
// promise that resolves once the player is idle.
function play(frames) {
	const player = createAudioPlayer({ behaviors: { noSubscriber: NoSubscriberBehavior.Pause } });
	player.on('error', (error) => fail(`audio player error: ${error?.message ?? error}`));
	const source = new Readable({ objectMode: true, read() {} });
	for (const frame of frames) source.push(frame);
	source.push(null);
	const resource = createAudioResource(source, { inputType: StreamType.Opus });
	const played = new Promise((resolve) => {
		player.on('stateChange', (old, next) => {
			if (old.status !== AudioPlayerStatus.Idle && next.status === AudioPlayerStatus.Idle) resolve();
		});
	});
	connection.subscribe(player);
	player.play(resource);
	return { resource, played };
}

// The "session" scenario: commands on stdin (see the top of this file).
async function session() {
	const received = new Map();
	for (const user of params.peer_user_ids ?? []) {
		received.set(user, []);
		const stream = connection.receiver.subscribe(user, { end: { behavior: EndBehaviorType.Manual } });
		stream.on('data', (packet) => received.get(user).push(Buffer.from(packet).toString('hex')));
	}
	emit({ event: 'ready', ssrc: networkingState()?.connectionData?.ssrc, ...daveState() });
	const { createInterface } = await import('node:readline');
	const lines = createInterface({ input: process.stdin });
	for await (const line of lines) {
		const command = JSON.parse(line);
		if (command.cmd === 'play') {
			await play(command.frames.map((hex) => Buffer.from(hex, 'hex'))).played;
			emit({ event: 'played' });
		} else if (command.cmd === 'collect') {
			const frames = received.get(command.user_id) ?? [];
			try {
				await waitFor(`${command.count} frames from ${command.user_id}`, () => frames.length >= command.count, command.timeout_ms ?? 5000);
			} catch {}
			emit({ event: 'collected', frames: frames.splice(0) });
		} else if (command.cmd === 'dave') {
			try {
				await waitFor(
					`DAVE version ${command.version}`,
					() => {
						const state = daveState();
						return state.version === command.version && state.pending === 0 && (command.version === 0 || state.ready);
					},
					command.timeout_ms ?? 10_000,
				);
			} catch (error) {
				fail(`${error.message}: ${JSON.stringify(daveState())}`);
			}
			emit({ event: 'dave', ...daveState() });
		} else if (command.cmd === 'leave') {
			clearTimeout(deadline);
			connection.destroy();
			setTimeout(() => process.exit(0), 200).unref();
			return;
		}
	}
}

// The UDP socket closes (what VoiceUDPSocket reports when it fails):
// @discordjs/voice resumes on a new websocket and closes the old one with
// 1000. Prints what it resumed with, then leaves.
async function loseUdp() {
	const networking = connection.state.networking;
	let resumed = false;
	networking.on('stateChange', (old, next) => {
		if (old.code === 5 /* Resuming */ && next.code === 4 /* Ready */) resumed = true;
	});
	networking.state.udp.socket.close();
	try {
		await waitFor('the resume after losing UDP', () => resumed, 10_000);
	} catch (error) {
		fail(error.message);
	}
	emit({
		event: 'resumed',
		ssrc: networkingState()?.connectionData?.ssrc,
		ws_sequence: networkingState()?.ws?.sequence,
	});
	clearTimeout(deadline);
	connection.destroy();
	setTimeout(() => process.exit(0), 200).unref();
}

main().catch((error) => fail(error?.stack ?? String(error)));
