# Interop client: discord.py (the version pinned in requirements.txt) joins a
# call on this voice server with its own VoiceClient: its voice websocket,
# IP discovery, UDP socket, transport encryption, AudioPlayer and (when the
# call negotiates it) its DAVE session through `davey`. Driven by
# control/tests/interop_python.rs.
#
# discord.py's voice connection is normally started by its main gateway
# (Discord's op 4, answered by VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE).
# Here a few stand-in objects take that part and nothing else: the guild's
# change_voice_state (the op 4) answers with the two events a real gateway
# would dispatch, filled with what the test obtained over LVSP, and the
# client's HTTP object opens the voice websocket as discord.py's own
# HTTPClient.ws_connect does, with the test's certificate trusted. Everything
# from there on is the library's code.
#
# Sending: VoiceClient.play with an AudioSource whose is_opus() is True and
# whose read() returns the test's Opus frames (no libopus needed). After the
# source ends the AudioPlayer sends 5 Opus silence frames (player.py's
# send_silence), which the test expects.
#
# Receiving: discord.py has no voice receive. The receive extension on PyPI
# (discord-ext-voice-recv, last released as an alpha before discord.py 2.7)
# knows neither DAVE nor discord.py 2.7's connection internals, so this
# script reads the library's own UDP socket through the library's own hook
# (VoiceConnectionState.add_socket_listener, which its IP discovery uses
# too), opens the transport encryption itself with the library's secret key
# and negotiated mode (PyNaCl, as the library's encryption uses), and leaves
# the DAVE layer to the library's own davey session (dave_session.decrypt,
# once the library's player thread, which encrypts with that session, has
# stopped). SSRC -> user comes from Speaking (op 5), seen
# through the library's websocket hook (VoiceConnectionState(hook=...)),
# since discord.py keeps no such map.
#
# Parameters: one JSON object, from argv[1] or the PYTHON_CLIENT_PARAMS env
# var:
#   endpoint       "host:port" of the voice gateway (discord.py connects to
#                  wss://{endpoint}/?v=8, as from VOICE_SERVER_UPDATE)
#   cafile         PEM certificate to trust for it (the server's self-signed
#                  one)
#   guild_id       the server_id (guild) of the call
#   channel_id     the voice channel
#   user_id        this client's user id
#   session_id     VOICE_STATE_DONE.session_id from LVSP
#   token          CHANNEL_ASSIGN.token from LVSP
#   frames         Opus frames to send, hex strings, in order
#   peer_user_id   the member whose frames must be received
#   announce       true: say Speaking (op 5, voice) once connected, before
#                  waiting for the peer's (the library's own op 5 after its
#                  Session Description says it is not speaking)
#   dave           true: wait until the library's DAVE session is ready at
#                  protocol version 1 (group formed, no transition pending)
#                  before saying "ready", so every frame it sends is end-to-
#                  end encrypted
#   silence_ms     quiet time after its own playing that ends receiving
#                  (default 1000)
#   timeout_ms     hard limit for the whole run (default 25000)
# Set PYTHON_CLIENT_DEBUG=1 for discord.py's debug log on stderr.
#
# Stdout gets JSON lines: {"event":"ready",...} once connected and the
# peer's SSRC is known (the driver starts sending then), and
# {"event":"result",...} at the end, after which it disconnects (its
# websocket closes with 1000). Exit 0 on success; on failure or timeout a
# message on stderr and a non-zero exit.

import asyncio
import json
import logging
import os
import ssl
import struct
import sys
import time
from types import SimpleNamespace

import aiohttp
import davey
import discord
import nacl.secret
from discord.http import DiscordClientWebSocketResponse
from discord.opus import OPUS_SILENCE
from discord.voice_state import VoiceConnectionState


def fail(message):
    print(f'python_client: {message}', file=sys.stderr, flush=True)
    os._exit(1)


def emit(event):
    sys.stdout.write(json.dumps(event) + '\n')
    sys.stdout.flush()


params = json.loads(sys.argv[1] if len(sys.argv) > 1 else os.environ.get('PYTHON_CLIENT_PARAMS', 'null'))
if not isinstance(params, dict):
    print('python_client: pass the parameters as JSON in argv[1] or PYTHON_CLIENT_PARAMS', file=sys.stderr)
    sys.exit(2)
for key in ('endpoint', 'cafile', 'guild_id', 'channel_id', 'user_id', 'session_id', 'token', 'peer_user_id'):
    if not isinstance(params.get(key), str):
        print(f'python_client: parameter {key} must be a string', file=sys.stderr)
        sys.exit(2)
FRAMES = [bytes.fromhex(f) for f in params.get('frames', [])]
SILENCE_S = params.get('silence_ms', 1000) / 1000
TIMEOUT_S = params.get('timeout_ms', 25_000) / 1000
GUILD_ID = int(params['guild_id'])
CHANNEL_ID = int(params['channel_id'])
USER_ID = int(params['user_id'])
PEER_ID = int(params['peer_user_id'])
if os.environ.get('PYTHON_CLIENT_DEBUG') == '1':
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)


# -- Stand-ins for the main gateway's side ----------------------------------


class Http:
    """discord.py's HTTPClient.ws_connect, with the server's certificate
    trusted: the same options, the same websocket response class."""

    def __init__(self, cafile):
        context = ssl.create_default_context(cafile=cafile)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            ws_response_class=DiscordClientWebSocketResponse,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def ws_connect(self, url, *, compress=0):
        return await self.session.ws_connect(
            url,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=30.0),
            autoclose=False,
            headers={'User-Agent': f'DiscordBot (interop test) discord.py/{discord.__version__}'},
            compress=compress,
        )


class ConnectionState:
    """What VoiceClient reads of discord.py's ConnectionState."""

    def __init__(self, loop):
        self.loop = loop
        self.user = SimpleNamespace(id=USER_ID)
        self.http = Http(params['cafile'])

    def _remove_voice_client(self, key):
        pass


class Client:
    def __init__(self, loop):
        self.loop = loop
        self._connection = ConnectionState(loop)


class Guild:
    """Guild.change_voice_state sends op 4 on the main gateway; here the
    answer comes at once: VOICE_STATE_UPDATE, then VOICE_SERVER_UPDATE on a
    join, a VOICE_STATE_UPDATE without channel on a leave."""

    def __init__(self):
        self.id = GUILD_ID
        self.me = SimpleNamespace(id=USER_ID, voice=None)
        self.voice_client = None
        self.joins = 0

    async def change_voice_state(self, *, channel, self_mute=False, self_deaf=False, **_):
        vc = self.voice_client
        state = {
            'guild_id': params['guild_id'],
            'channel_id': None if channel is None else str(channel.id),
            'user_id': params['user_id'],
            'session_id': params['session_id'],
            'deaf': False,
            'mute': False,
            'self_deaf': self_deaf,
            'self_mute': self_mute,
            'self_video': False,
            'suppress': False,
            'request_to_speak_timestamp': None,
        }
        if channel is not None:
            self.joins += 1
            if self.joins > 1:
                # discord.py starts over with op 4 when its voice websocket
                # closed with a code it does not resume from: a failure here.
                fail(f'discord.py asked to join again (attempt {self.joins})')

        async def dispatch():
            # A gateway's answers come a round trip later. discord.py's
            # connection flow needs that: it waits for its state to change
            # on an asyncio.Event that it sets and clears at once, so a
            # change made before its waiting task runs is never seen.
            await asyncio.sleep(0.05)
            await vc.on_voice_state_update(state)
            if channel is not None:
                await asyncio.sleep(0.05)
                await vc.on_voice_server_update(
                    {'token': params['token'], 'guild_id': params['guild_id'], 'endpoint': params['endpoint']}
                )

        asyncio.get_running_loop().create_task(dispatch())


class Channel:
    def __init__(self, guild):
        self.id = CHANNEL_ID
        self.guild = guild

    def _get_voice_client_key(self):
        return self.guild.id, 'guild_id'


# -- The voice client --------------------------------------------------------


class FramesSource(discord.AudioSource):
    """Pre-encoded Opus frames, one per read (20 ms each)."""

    def __init__(self, frames):
        self.frames = list(frames)

    def read(self):
        return self.frames.pop(0) if self.frames else b''

    def is_opus(self):
        return True


class InteropVoiceClient(discord.VoiceClient):
    """discord.VoiceClient with a websocket hook (the library's extension
    point): every JSON message the voice websocket received is recorded, and
    Speaking (op 5) builds the SSRC -> user map receiving needs."""

    def create_connection_state(self):
        self.messages = []
        self.ssrc_users = {}
        return VoiceConnectionState(self, hook=self._on_ws_message)

    async def _on_ws_message(self, ws, msg):
        self.messages.append(msg)
        if msg.get('op') == 5 and isinstance(msg.get('d'), dict):
            d = msg['d']
            self.ssrc_users[int(d['ssrc'])] = int(d['user_id'])


class Receiver:
    """Opens what arrives on the library's UDP socket: the transport layer
    with the library's key and mode, then DAVE with the library's session."""

    def __init__(self, vc, loop):
        self.vc = vc
        self.loop = loop
        self.frames = {}  # user id -> [payload]
        self.unknown_ssrcs = set()
        self.errors = []
        self.last = None
        vc._connection.add_socket_listener(self.on_datagram)

    def on_datagram(self, data):
        # Called on the library's socket reader thread; the work is done on
        # the event loop, where the DAVE session lives.
        self.loop.call_soon_threadsafe(self.handle, bytes(data))

    def handle(self, data):
        if len(data) < 12 or data[0] >> 6 != 2 or 200 <= data[1] <= 204:
            return  # not RTP (IP discovery), or RTCP
        ssrc = struct.unpack_from('>I', data, 8)[0]
        if ssrc == self.vc.ssrc:
            return
        try:
            payload = self.open(data)
        except Exception as e:
            self.errors.append(f'ssrc {ssrc}: {e!r}')
            return
        user = self.vc.ssrc_users.get(ssrc)
        if user is None:
            self.unknown_ssrcs.add(ssrc)
            return
        self.frames.setdefault(user, []).append(payload)
        self.last = time.monotonic()

    def open_dave(self):
        """The DAVE layer, once the library's player stopped: its thread
        encrypts with the same davey session, which is left to it alone
        while it plays (the frames wait here meanwhile)."""
        state = self.vc._connection
        if state.dave_session is None or state.dave_protocol_version == 0:
            return
        for user, frames in self.frames.items():
            opened = []
            for payload in frames:
                if payload == OPUS_SILENCE:
                    opened.append(payload)  # sent in the clear
                    continue
                try:
                    opened.append(state.dave_session.decrypt(user, davey.MediaType.audio, payload))
                except Exception as e:
                    self.errors.append(f'DAVE from {user}: {e!r}')
            self.frames[user] = opened

    def open(self, data):
        mode = self.vc.mode
        key = bytes(self.vc.secret_key)
        header_len = 12 + 4 * (data[0] & 0x0F)
        extended = data[0] & 0x10
        if mode == 'aead_xchacha20_poly1305_rtpsize':
            # The header and the extension's 4-byte preamble are the AAD; a
            # 32-bit counter ends the packet (the nonce's first 4 bytes).
            aad_len = header_len + (4 if extended else 0)
            nonce = data[-4:] + bytes(20)
            plain = nacl.secret.Aead(key).decrypt(data[aad_len:-4], data[:aad_len], nonce)
            if extended:
                words = struct.unpack_from('>H', data, header_len + 2)[0]
                plain = plain[4 * words :]
            return plain
        box = nacl.secret.SecretBox(key)
        if mode == 'xsalsa20_poly1305':
            plain = box.decrypt(data[header_len:], data[:12] + bytes(12))
        elif mode == 'xsalsa20_poly1305_suffix':
            plain = box.decrypt(data[header_len:-24], data[-24:])
        elif mode == 'xsalsa20_poly1305_lite':
            plain = box.decrypt(data[header_len:-4], data[-4:] + bytes(20))
        else:
            raise ValueError(f'mode {mode}')
        if extended:
            words = struct.unpack_from('>H', plain, 2)[0]
            plain = plain[4 + 4 * words :]
        return plain


async def wait_until(what, predicate, seconds):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f'timed out waiting for {what}')
        await asyncio.sleep(0.01)


async def main():
    loop = asyncio.get_running_loop()
    client = Client(loop)
    guild = Guild()
    channel = Channel(guild)
    # What Connectable.connect does: construct, then connect. No reconnect:
    # any close the library would start over from is a failure here.
    vc = InteropVoiceClient(client, channel)
    guild.voice_client = vc
    try:
        await vc.connect(reconnect=False, timeout=10.0)
    except Exception as e:
        fail(f'discord.py did not connect: {e!r}')
    receiver = Receiver(vc, loop)
    state = vc._connection
    if params.get('announce'):
        await vc.ws.speak(discord.SpeakingState.voice)

    peer_ssrc = await wait_until(
        f'a Speaking op 5 naming {PEER_ID}',
        lambda: next((s for s, u in vc.ssrc_users.items() if u == PEER_ID), None),
        5.0,
    )
    if params.get('dave'):
        await wait_until(
            'the DAVE session at protocol version 1',
            lambda: state.dave_protocol_version == 1
            and state.dave_session is not None
            and state.dave_session.ready
            and not state.dave_pending_transitions,
            15.0,
        )
    emit(
        {
            'event': 'ready',
            'ssrc': vc.ssrc,
            'mode': vc.mode,
            'peer_ssrc': peer_ssrc,
            'dave_protocol_version': state.dave_protocol_version,
        }
    )

    played = loop.create_future()
    vc.play(FramesSource(FRAMES), after=lambda e: loop.call_soon_threadsafe(played.set_result, e))
    error = await played
    if error is not None:
        fail(f'the player failed: {error!r}')
    # Receiving ends after SILENCE_S without a packet (and at least one).
    await wait_until(
        'the peer to go quiet',
        lambda: receiver.last is not None and time.monotonic() - receiver.last > SILENCE_S,
        TIMEOUT_S,
    )
    receiver.open_dave()
    emit(
        {
            'event': 'result',
            'library': f'discord.py {discord.__version__}, davey {davey.__version__}',
            'ssrc': vc.ssrc,
            'mode': vc.mode,
            'received': [f.hex() for f in receiver.frames.get(PEER_ID, [])],
            'received_from_others': {str(u): len(f) for u, f in receiver.frames.items() if u != PEER_ID},
            'unknown_ssrcs': sorted(receiver.unknown_ssrcs),
            'errors': receiver.errors[:10],
            'ssrc_users': {str(s): str(u) for s, u in vc.ssrc_users.items()},
            'ops': sorted({m.get('op') for m in vc.messages}),
            'latency': None if vc.latency == float('inf') else vc.latency,
            'dave_protocol_version': state.dave_protocol_version,
            'dave_epoch': state.dave_session.epoch if state.dave_session else None,
            'privacy_code': vc.voice_privacy_code,
        }
    )
    # Leave: op 4 without a channel on the main gateway, then the voice
    # websocket closes with 1000.
    await vc.disconnect()
    await client._connection.http.session.close()


async def run():
    try:
        await asyncio.wait_for(main(), TIMEOUT_S)
    except asyncio.TimeoutError:
        fail(f'timed out after {TIMEOUT_S} s')


asyncio.run(run())
