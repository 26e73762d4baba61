// The data channel's parts over real TCP sockets on 127.0.0.1: the sealed record layer (sealed-channel.ts),
// the ticket-checking listener and its client (data-channel.ts), and a link's set-up over real libp2p nodes.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import net, { type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import { SealedChannel, type SealedChannelInit } from '../../src/p2p/sealed-channel.js'
import { CLIENT_READ_BUFFER_BYTES, DataChannelServer, MAX_TICKETS_PER_PEER, TICKET_TTL_MS, TOKEN_BYTES, connectDataChannel, type ChannelKeys } from '../../src/p2p/data-channel.js'
import { silentLogger } from '../../src/blockstack/cache.js'
import { createNode } from '../../src/p2p/node.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { PeerLink } from '../../src/p2p/peer-link.js'
import { serveBlockStream, serveDataChannel, type BlockServerInit } from '../../src/p2p/block-server.js'
import { TokenBucket } from '../../src/p2p/rate-limit.js'
import { BLOCKS_PROTOCOL } from '../../src/p2p/wire.js'

/** A connected pair of real TCP sockets. */
async function socketPair (): Promise<{ a: Socket, b: Socket, close: () => void }> {
  const server = net.createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  const accepted = new Promise<Socket>(resolve => server.once('connection', resolve))
  const a = net.connect({ host: '127.0.0.1', port })
  await new Promise(resolve => a.once('connect', resolve))
  const b = await accepted
  server.close()
  return { a, b, close: () => { a.destroy(); b.destroy() } }
}

interface End { channel: SealedChannel, frames: Buffer[], closed: Promise<Error | undefined> }

function end (socket: Socket, sendKey: Uint8Array, receiveKey: Uint8Array, extra: Partial<SealedChannelInit> = {}): End {
  const frames: Buffer[] = []
  const { promise, resolve } = Promise.withResolvers<Error | undefined>()
  const channel = new SealedChannel({
    socket,
    sendKey,
    receiveKey,
    maxReceiveFrameBytes: 4 * 1024 * 1024,
    onFrame: frame => { frames.push(Buffer.from(frame.subarray())) },
    onClose: err => { resolve(err) },
    ...extra
  })
  return { channel, frames, closed: promise }
}

async function until (what: string, predicate: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !predicate(); i++) await new Promise(resolve => setTimeout(resolve, 5))
  assert.ok(predicate(), `timed out waiting for ${what}`)
}

test('sealed channel: frames of every size arrive whole and in order, both ways; parts are sealed as one record', { timeout: 30_000 }, async () => {
  const { a, b, close } = await socketPair()
  const k1 = randomBytes(32)
  const k2 = randomBytes(32)
  const left = end(a, k1, k2)
  const right = end(b, k2, k1)
  try {
    const sizes = [0, 1, 15, 16, 17, 4096, 65536, 65536 + 9, 1024 * 1024 + 3]
    const sent = sizes.map(n => randomBytes(n))
    for (const frame of sent) await left.channel.write(frame)
    // A frame of parts (header and block data, as encodeBlocksFrame builds it) is one record.
    const parts = new Uint8ArrayList(randomBytes(9), randomBytes(65536), randomBytes(100))
    await left.channel.write(parts)
    await right.channel.write(Buffer.from('pong'))
    await until('every frame', () => right.frames.length === sent.length + 1 && left.frames.length === 1)
    sent.forEach((frame, i) => { assert.ok(right.frames[i].equals(frame), `frame ${i} (${frame.length} bytes)`) })
    assert.ok(right.frames[sent.length].equals(Buffer.from(parts.subarray())))
    assert.equal(left.frames[0].toString(), 'pong')
  } finally {
    close()
  }
})

/** The bytes a sealed channel puts on the wire for one frame under `key` (captured from a throwaway pair). */
async function sealedRecord (key: Uint8Array, payload: Buffer): Promise<Buffer> {
  const tap = await socketPair()
  try {
    const captured: Buffer[] = []
    tap.b.on('data', chunk => { captured.push(chunk) })
    await end(tap.a, key, randomBytes(32)).channel.write(payload)
    await until('the record', () => Buffer.concat(captured).length >= 4 + payload.length + 16)
    return Buffer.concat(captured)
  } finally {
    tap.close()
  }
}

test('sealed channel: a flipped byte, a wrong key or a replayed record fails authentication and delivers nothing', { timeout: 30_000 }, async () => {
  const cases: Array<{ what: string, wire: (key: Uint8Array) => Promise<Buffer>, delivered: string[] }> = [
    // A flipped ciphertext byte: the receiver never sees the frame.
    { what: 'flipped', wire: async key => { const r = await sealedRecord(key, randomBytes(1000)); r[4 + 500] ^= 1; return r }, delivered: [] },
    // The right record twice: the second is checked under the next counter.
    { what: 'replayed', wire: async key => { const r = await sealedRecord(key, Buffer.from('once')); return Buffer.concat([r, r]) }, delivered: ['once'] },
    // Sealed under another key.
    { what: 'wrong key', wire: async () => await sealedRecord(randomBytes(32), Buffer.from('secret')), delivered: [] }
  ]
  for (const c of cases) {
    const { a, b, close } = await socketPair()
    const key = randomBytes(32)
    const right = end(b, randomBytes(32), key)
    try {
      a.write(await c.wire(key))
      assert.equal((await right.closed)?.name, 'ChannelAuthError', c.what)
      assert.deepEqual(right.frames.map(f => f.toString()), c.delivered, c.what)
    } finally {
      close()
    }
  }
})

test('sealed channel: a length over the bound closes the channel at once (nothing is buffered for it)', { timeout: 30_000 }, async () => {
  const { a, b, close } = await socketPair()
  const right = end(b, randomBytes(32), randomBytes(32), { maxReceiveFrameBytes: 1024 })
  try {
    const header = Buffer.alloc(4)
    header.writeUInt32BE(0xffffffff)
    a.write(header)
    const err = await right.closed
    assert.equal(err?.name, 'WireDecodeError')
    assert.match(err?.message ?? '', /at most 1024/)
    assert.equal(right.frames.length, 0)
  } finally {
    close()
  }
})

test('sealed channel: a writer waits for the socket to drain (bounded memory) and is released by its signal or the close', { timeout: 30_000 }, async () => {
  const { a, b, close } = await socketPair()
  const left = end(a, randomBytes(32), randomBytes(32))
  try {
    b.pause() // the reader reads nothing: 32 MiB is more than the kernel buffers both ends can hold
    const frame = randomBytes(1024 * 1024)
    const writes = Array.from({ length: 32 }, () => left.channel.write(frame))
    let lastSettled = false
    void writes[writes.length - 1].then(() => { lastSettled = true })
    const controller = new AbortController()
    const next = left.channel.write(Buffer.from('x'), controller.signal)
    controller.abort(new Error('gave up'))
    await assert.rejects(next, /gave up/)
    assert.equal(lastSettled, false, 'the last write still waits for a drain that cannot come')
    assert.ok(left.channel.pendingBytes > 0)
    left.channel.destroy()
    await Promise.all(writes) // the close releases every waiting writer
    await assert.rejects(left.channel.write(Buffer.from('late')), { name: 'PeerLinkClosedError' })
  } finally {
    close()
  }
})

test('data channel listener: a live ticket is served once for its peer; a wrong, reused or expired one is refused; tickets are bounded', { timeout: 30_000 }, async () => {
  let nowMs = 1_000
  const served: Array<{ peerId: string, keys: ChannelKeys, first: Buffer }> = []
  const server = new DataChannelServer({
    host: '127.0.0.1',
    port: 0,
    logger: silentLogger,
    nowMs: () => nowMs,
    serve: (peerId, socket, keys) => {
      socket.once('data', (first: Buffer) => { served.push({ peerId, keys, first }); socket.destroy() })
    }
  })
  await server.start()
  try {
    const offer = server.offer('peer-a')
    assert.ok(offer !== undefined)
    assert.equal(offer.token.length, TOKEN_BYTES)
    // The ticket and the first bytes after it in one write: the bytes reach the server of the channel.
    const { socket } = await connectDataChannel('127.0.0.1', offer, AbortSignal.timeout(5_000))
    socket.write('hello')
    await until('served', () => served.length === 1)
    assert.equal(served[0].peerId, 'peer-a')
    assert.equal(served[0].first.toString(), 'hello')
    assert.deepEqual(Buffer.from(served[0].keys.receiveKey), Buffer.from(offer.clientKey))
    assert.deepEqual(Buffer.from(served[0].keys.sendKey), Buffer.from(offer.serverKey))

    const refused = async (token: Uint8Array): Promise<void> => {
      const { socket: s } = await connectDataChannel('127.0.0.1', { ...offer, token }, AbortSignal.timeout(5_000))
      await new Promise(resolve => s.once('close', resolve))
    }
    await refused(offer.token) // used once already
    await refused(randomBytes(TOKEN_BYTES))
    const stale = server.offer('peer-a')!
    nowMs += TICKET_TTL_MS
    await refused(stale.token)
    assert.equal(served.length, 1)

    for (let i = 0; i < MAX_TICKETS_PER_PEER; i++) assert.ok(server.offer('peer-b') !== undefined)
    assert.equal(server.offer('peer-b'), undefined, 'tickets per peer are bounded')
    assert.ok(server.offer('peer-c') !== undefined, 'other peers still get theirs')
  } finally {
    await server.stop()
  }
  // Nothing listens any more: connecting fails fast, with the socket's error.
  await assert.rejects(connectDataChannel('127.0.0.1', { port: server.port ?? 1, token: randomBytes(16), clientKey: randomBytes(32), serverKey: randomBytes(32) }, AbortSignal.timeout(5_000)))
})

test('a link whose first data channel set-up fails tries again, then moves its requests onto the channel, and outlives its stream', { timeout: 60_000 }, async () => {
  const a = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const b = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const stop = new AbortController()
  // A port with nothing on it yet: the first offer points there and the client's connect is refused.
  const probe = net.createServer()
  await new Promise<void>(resolve => probe.listen(0, '127.0.0.1', resolve))
  const port = (probe.address() as net.AddressInfo).port
  await new Promise<void>(resolve => probe.close(() => { resolve() }))
  let channels: DataChannelServer | undefined
  const serverInit: BlockServerInit = {
    resolve: () => undefined,
    admit: () => undefined,
    uploadBucket: new TokenBucket(undefined),
    logger: silentLogger,
    dataChannels: {
      offer: peerId => channels?.offer(peerId) ?? { port, token: randomBytes(TOKEN_BYTES), clientKey: randomBytes(32), serverKey: randomBytes(32) }
    }
  }
  let sleeps = 0
  // The retry's wait, in virtual time: the listener comes up during it.
  const clock = {
    nowMs: () => performance.now(),
    sleep: async () => {
      sleeps++
      channels ??= new DataChannelServer({ host: '127.0.0.1', port, logger: silentLogger, nowMs: () => performance.now(), serve: (peerId, socket, keys) => { serveDataChannel(serverInit, peerId, socket, keys, stop.signal) } })
      await channels.start()
    }
  }
  try {
    await a.start()
    await b.start()
    await a.handle(BLOCKS_PROTOCOL, (stream, connection) => { void serveBlockStream(serverInit, stream, connection, stop.signal) })
    await b.dial(a.getMultiaddrs()[0])
    const link = new PeerLink(b, a.peerId, silentLogger, clock, { dataChannel: true })
    await link.ping(AbortSignal.timeout(10_000)) // on the stream; opening it starts the set-up
    await until('the data channel', () => link.onDataChannel)
    assert.equal(sleeps, 1, 'one failed attempt, one wait, then the channel')
    const framesBefore = link.channelFrames
    await link.ping(AbortSignal.timeout(10_000))
    assert.equal(link.channelFrames, framesBefore + 1, 'the next request went on the channel')
    assert.equal(channels?.connections, 1)
    // The muxer ends an idle stream (its inactivity timeout): the link goes on over its channel.
    const stream = b.getConnections(a.peerId).flatMap(c => c.streams).find(st => st.protocol === BLOCKS_PROTOCOL)
    assert.ok(stream !== undefined)
    stream.abort(new Error('stream inactive'))
    await until('the stream to end', () => !link.onStream)
    await link.ping(AbortSignal.timeout(10_000))
    assert.equal(link.closed, false)
    assert.equal(link.channelFrames, framesBefore + 2)
    link.close()
  } finally {
    stop.abort()
    await channels?.stop()
    await a.stop()
    await b.stop()
  }
})

test('data channel client: bytes read before the sink is given are handed over first, then every read, in order and intact (one reused read buffer)', { timeout: 30_000 }, async () => {
  const early = randomBytes(3000)
  const late = randomBytes(CLIENT_READ_BUFFER_BYTES * 2 + 12_345)
  let serverSocket: Socket | undefined
  const server = new DataChannelServer({
    host: '127.0.0.1',
    port: 0,
    logger: silentLogger,
    nowMs: () => 1_000,
    serve: (_peerId, socket) => { serverSocket = socket; socket.write(early) }
  })
  await server.start()
  try {
    const offer = server.offer('peer-a')!
    const { socket, receive } = await connectDataChannel('127.0.0.1', offer, AbortSignal.timeout(5_000))
    await until('served', () => serverSocket !== undefined)
    // Let the early bytes arrive while nothing takes them.
    await until('early bytes read', () => socket.bytesRead >= early.length)
    const got: Buffer[] = []
    receive(chunk => { got.push(Buffer.from(chunk)) })
    assert.deepEqual(Buffer.concat(got), early)
    serverSocket!.write(late)
    await until('late bytes', () => got.reduce((n, c) => n + c.length, 0) === early.length + late.length)
    assert.ok(Buffer.concat(got).equals(Buffer.concat([early, late])))
    socket.destroy()
  } finally {
    await server.stop()
  }
})
