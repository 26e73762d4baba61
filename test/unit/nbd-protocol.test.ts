// The NBD server driven byte by byte over a real unix socket: negotiation, option errors, transmission
// commands, pipelining, backpressure, and bad clients that must lose only their own connection.

import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { lstat, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createNbdServer, staticExportProvider, type NbdServerInit } from '../../src/blockstack/nbd/index.js'
import type { NbdExport } from '../../src/blockstack/types.js'
import { controlledExport, errorName, memoryExport, patternBytes, RawClient, recordingLogger } from './nbd-helpers.js'

const SIZE = 1024 * 1024
const DATA = patternBytes(0, SIZE)
const T = { timeout: 10_000 }

const READ = 0
const WRITE = 1
const DISC = 2
const FLUSH = 3
const TRIM = 4
const WRITE_ZEROES = 6
const EPERM = 1
const EIO = 5
const EINVAL = 22
const ACK = 1
const REP_SERVER = 2
const REP_INFO = 3
const ERR_UNSUP = 0x80000001
const ERR_INVALID = 0x80000003
const ERR_UNKNOWN = 0x80000006

async function startServer (t: TestContext, exports: NbdExport[], init: Partial<NbdServerInit> = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-proto-'))
  const path = join(dir, 'nbd.sock')
  const logger = recordingLogger()
  const server = createNbdServer({ provider: staticExportProvider(exports), logger, ...init })
  await server.listenUnix(path)
  const clients: RawClient[] = []
  const connect = async (): Promise<RawClient> => {
    const c = await RawClient.connect(path)
    clients.push(c)
    return c
  }
  t.after(async () => {
    for (const c of clients) c.destroy()
    await server.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { server, path, logger, connect }
}

/** A client that reads a range and checks it against DATA. */
async function checkRead (c: RawClient, handle: number, offset: number, length: number): Promise<void> {
  c.sendRequest(READ, handle, offset, length)
  const r = await c.reply(() => length)
  assert.equal(r.error, 0)
  assert.equal(r.handle, handle)
  assert.ok(r.data.equals(DATA.subarray(offset, offset + length)), 'data matches')
}

test('GO returns export info, name, description and block size, then serves reads', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('disk', DATA, 'a test disk')])
  const c = await connect()
  assert.equal(await c.handshake(), 3, 'FIXED_NEWSTYLE | NO_ZEROES')
  const replies = await c.info('disk', [1, 2, 3])
  assert.deepEqual(replies.map(r => r.type), [REP_INFO, REP_INFO, REP_INFO, REP_INFO, ACK])
  const exportInfo = replies[0].data
  assert.equal(exportInfo.readUInt16BE(0), 0)
  assert.equal(Number(exportInfo.readBigUInt64BE(2)), SIZE)
  assert.equal(exportInfo.readUInt16BE(10), 0x1 | 0x2 | 0x4 | 0x100, 'HAS_FLAGS|READ_ONLY|SEND_FLUSH|CAN_MULTI_CONN')
  assert.equal(replies[1].data.readUInt16BE(0), 1)
  assert.equal(replies[1].data.subarray(2).toString(), 'disk')
  assert.equal(replies[2].data.readUInt16BE(0), 2)
  assert.equal(replies[2].data.subarray(2).toString(), 'a test disk')
  const bs = replies[3].data
  assert.deepEqual([bs.readUInt16BE(0), bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [3, 1, 4096, 32 * 1024 * 1024])
  await checkRead(c, 1, 0, 4096)
  await checkRead(c, 2, SIZE - 100, 100)
  await checkRead(c, 3, 12345, 65536)
})

test('option haggling: errors leave the connection usable, ABORT is acknowledged', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('a', DATA), memoryExport('b', DATA)])
  const c = await connect()
  await c.handshake()
  assert.equal((await c.info('nope', [], 6)).at(-1)?.type, ERR_UNKNOWN, 'INFO on an unknown export')
  assert.equal((await c.info('', [], 7)).at(-1)?.type, ERR_UNKNOWN, 'no default export among two')
  for (const option of [5, 8, 9, 10, 11, 99]) {
    c.sendOption(option)
    const r = await c.optionReply()
    assert.equal(r.option, option)
    assert.equal(r.type, ERR_UNSUP, `option ${option} unsupported`)
  }
  c.sendOption(6, Buffer.from([0, 0, 0, 9, 1])) // name length past the data
  assert.equal((await c.optionReply()).type, ERR_INVALID)
  c.sendOption(3, Buffer.from('x'))
  assert.equal((await c.optionReply()).type, ERR_INVALID, 'LIST with data')
  c.sendOption(3)
  const listed: string[] = []
  for (;;) {
    const r = await c.optionReply()
    if (r.type === ACK) break
    assert.equal(r.type, REP_SERVER)
    listed.push(r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString())
  }
  assert.deepEqual(listed, ['a', 'b'])
  assert.equal((await c.info('b', [], 6)).at(-1)?.type, ACK, 'INFO on a real export')
  c.sendOption(2)
  assert.equal((await c.optionReply()).type, ACK)
  await c.closed
})

test('the empty name picks the only export', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('only', DATA)])
  const c = await connect()
  await c.open('')
  await checkRead(c, 7, 4096, 4096)
})

test('NBD_OPT_EXPORT_NAME honours NO_ZEROES and closes on an unknown export', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('disk', DATA)])
  const padded = await connect()
  await padded.handshake(1)
  padded.sendOption(1, Buffer.from('disk'))
  const reply = await padded.read(10 + 124)
  assert.equal(Number(reply.readBigUInt64BE(0)), SIZE)
  assert.ok(reply.subarray(10).equals(Buffer.alloc(124)))
  await checkRead(padded, 1, 100, 1000)

  const bare = await connect()
  await bare.handshake(3)
  bare.sendOption(1, Buffer.from('disk'))
  assert.equal(Number((await bare.read(10)).readBigUInt64BE(0)), SIZE)
  await checkRead(bare, 2, 0, 28) // the reply must follow the 10 bytes directly

  const unknown = await connect()
  await unknown.handshake()
  unknown.sendOption(1, Buffer.from('missing'))
  assert.ok(await unknown.closesWithoutData())
})

test('garbage, bad flags, bad option magic, huge and truncated options close only that connection', T, async (t) => {
  const { connect, logger } = await startServer(t, [memoryExport('disk', DATA)])
  const good = await connect()
  await good.open('disk')

  const http = await connect()
  await http.read(18)
  http.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
  await http.closed

  const flags = await connect()
  await flags.handshake(0x80)
  await flags.closed

  const magic = await connect()
  await magic.handshake()
  magic.write(Buffer.from('NOTMAGIC\0\0\0\x07\0\0\0\0'))
  await magic.closed

  const huge = await connect()
  await huge.handshake()
  huge.sendOption(7, Buffer.alloc(0), 0x40000000) // declares 1 GiB and sends none of it
  await huge.closed
  await logger.waitFor(e => errorName(e) === 'NbdOptionTooLargeError')

  const truncated = await connect()
  await truncated.read(18)
  truncated.write(Buffer.from([0, 0]))
  truncated.socket.end()
  await truncated.closed
  await logger.waitFor(e => errorName(e) === 'NbdNegotiationTruncatedError')

  await checkRead(good, 1, 1000, 5000)
  const fresh = await connect()
  await fresh.open('disk')
  await checkRead(fresh, 2, 0, 4096)
})

test('a client idle in negotiation is dropped after the timeout', T, async (t) => {
  const { connect, logger } = await startServer(t, [memoryExport('disk', DATA)], { negotiationTimeoutMs: 100 })
  const idle = await connect()
  await idle.handshake()
  await idle.closed
  const entry = await logger.waitFor(e => errorName(e) === 'NbdNegotiationTimeoutError')
  assert.equal(entry.level, 'warn')
})

test('transmission: bad requests get EINVAL, writes EPERM with the payload skipped, flush succeeds', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('disk', DATA)], { maxPayloadBytes: 65536 })
  const c = await connect()
  await c.open('disk')
  const expect = async (error: number, handle: number): Promise<void> => {
    const r = await c.reply()
    assert.deepEqual([r.handle, r.error], [handle, error])
  }
  c.sendRequest(READ, 1, 0, 0)
  await expect(EINVAL, 1)
  c.sendRequest(READ, 2, SIZE - 10, 11)
  await expect(EINVAL, 2)
  c.sendRequest(READ, 3, 2 ** 62, 4096)
  await expect(EINVAL, 3)
  c.sendRequest(READ, 4, 0, 65537)
  await expect(EINVAL, 4)
  c.sendRequest(READ, 5, 0, 512, 1 << 2) // DF without structured replies
  await expect(EINVAL, 5)
  c.sendRequest(42, 6, 0, 512)
  await expect(EINVAL, 6)
  // The payload holds a valid-looking request header: it must be skipped, not parsed.
  const payload = Buffer.alloc(4096)
  payload.writeUInt32BE(0x25609513, 0)
  c.sendRequest(WRITE, 7, 0, payload.length, 0, payload)
  await expect(EPERM, 7)
  c.sendRequest(TRIM, 8, 0, 4096)
  await expect(EPERM, 8)
  c.sendRequest(WRITE_ZEROES, 9, 0, 4096)
  await expect(EPERM, 9)
  c.sendRequest(FLUSH, 10, 0, 0)
  await expect(0, 10)
  await checkRead(c, 11, 65536, 65536)
  // A write over the advertised maximum is a protocol violation: the connection is closed.
  c.sendRequest(WRITE, 12, 0, 65537)
  await c.closed
})

test('pipelined reads are answered in completion order', T, async (t) => {
  const exp = controlledExport('disk', SIZE)
  const { connect } = await startServer(t, [exp])
  const c = await connect()
  await c.open('disk')
  c.sendRequest(READ, 1, 0, 100)
  c.sendRequest(READ, 2, 100, 200)
  c.sendRequest(READ, 3, 300, 300)
  const reads = [await exp.nextRead(), await exp.nextRead(), await exp.nextRead()]
  assert.deepEqual(reads.map(r => [r.offset, r.length]), [[0, 100], [100, 200], [300, 300]])
  const lengths: Record<number, number> = { 1: 100, 2: 200, 3: 300 }
  reads[2].resolve(Buffer.alloc(300, 3))
  const first = await c.reply(h => lengths[h])
  reads[0].resolve(Buffer.alloc(100, 1))
  const second = await c.reply(h => lengths[h])
  reads[1].resolve(Buffer.alloc(200, 2))
  const third = await c.reply(h => lengths[h])
  assert.deepEqual([first.handle, second.handle, third.handle], [3, 1, 2])
  assert.ok(first.data.equals(Buffer.alloc(300, 3)) && second.data.equals(Buffer.alloc(100, 1)) && third.data.equals(Buffer.alloc(200, 2)))
})

for (const bound of ['requests', 'bytes'] as const) {
  test(`over the in-flight ${bound} bound the server stops reading requests`, T, async (t) => {
    const exp = controlledExport('disk', SIZE)
    const init = bound === 'requests' ? { maxInFlightRequests: 2 } : { maxInFlightBytes: 8192 }
    const { connect } = await startServer(t, [exp], init)
    const c = await connect()
    await c.open('disk')
    for (let h = 1; h <= 5; h++) c.sendRequest(READ, h, h * 4096, 4096)
    const a = await exp.nextRead()
    const b = await exp.nextRead()
    a.resolve(Buffer.alloc(4096, 1))
    const r1 = await c.reply(() => 4096)
    assert.equal(r1.handle, 1)
    // Releasing one slot let exactly one more request in.
    assert.equal(exp.started.length, 3)
    b.resolve(Buffer.alloc(4096, 2))
    assert.equal((await c.reply(() => 4096)).handle, 2)
    for (let i = 2; i < 5; i++) (await exp.nextRead()).resolve(Buffer.alloc(4096, i + 1))
    const handles = [(await c.reply(() => 4096)).handle, (await c.reply(() => 4096)).handle, (await c.reply(() => 4096)).handle]
    assert.deepEqual(handles.sort(), [3, 4, 5])
  })
}

test('a client vanishing mid-read aborts its reads and leaves others served', T, async (t) => {
  const exp = controlledExport('slow', SIZE)
  // A vanished client looks like EOF; its reads are aborted once the (here short) grace ends.
  const { connect, logger } = await startServer(t, [exp, memoryExport('disk', DATA)], { halfCloseGraceMs: 20 })
  const gone = await connect()
  await gone.open('slow')
  gone.sendRequest(READ, 1, 0, 4096)
  const pending = await exp.nextRead()
  const aborted = once(pending.signal, 'abort')
  gone.destroy()
  await aborted
  pending.resolve(Buffer.alloc(4096)) // a late completion is dropped quietly

  // Many large reads in flight, then the client disappears.
  const burst = await connect()
  await burst.open('disk')
  for (let h = 1; h <= 16; h++) burst.sendRequest(READ, h, 0, SIZE)
  await burst.read(16)
  burst.destroy()

  const c = await connect()
  await c.open('disk')
  await checkRead(c, 1, 0, SIZE)
  assert.equal(logger.entries.filter(e => e.level === 'error').length, 0)
})

test('half-closed client still gets every reply, then the server closes', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('disk', DATA)])
  const c = await connect()
  await c.open('disk')
  for (let h = 1; h <= 3; h++) c.sendRequest(READ, h, h * 1000, 1000)
  c.socket.end()
  const handles = new Set<number>()
  for (let i = 0; i < 3; i++) {
    const r = await c.reply(() => 1000)
    assert.ok(r.data.equals(DATA.subarray(r.handle * 1000, r.handle * 1000 + 1000)))
    handles.add(r.handle)
  }
  assert.equal(handles.size, 3)
  await c.closed
})

test('NBD_CMD_DISC: in-flight reads are answered, then the connection closes', T, async (t) => {
  const exp = controlledExport('disk', SIZE)
  const { connect } = await startServer(t, [exp])
  const c = await connect()
  await c.open('disk')
  c.sendRequest(READ, 1, 0, 10)
  const pending = await exp.nextRead()
  c.sendRequest(DISC, 2, 0, 0)
  pending.resolve(Buffer.alloc(10, 9))
  const r = await c.reply(() => 10)
  assert.deepEqual([r.handle, r.error], [1, 0])
  await c.closed
})

test('export read failures become EIO, are logged, and the connection continues', T, async (t) => {
  const exp = controlledExport('disk', SIZE)
  const { connect, logger } = await startServer(t, [exp])
  const c = await connect()
  await c.open('disk')
  c.sendRequest(READ, 1, 0, 4096)
  ;(await exp.nextRead()).reject(new Error('disk on fire'))
  assert.deepEqual([(await c.reply()).error], [EIO])
  c.sendRequest(READ, 2, 0, 4096)
  ;(await exp.nextRead()).resolve(Buffer.alloc(100))
  assert.deepEqual([(await c.reply()).error], [EIO])
  await logger.waitFor(e => e.level === 'warn' && e.message.includes('read failed'))
  await logger.waitFor(e => errorName(e) === 'NbdExportReadLengthError')
  c.sendRequest(READ, 3, 0, 8)
  ;(await exp.nextRead()).resolve(Buffer.alloc(8, 1))
  assert.ok((await c.reply(() => 8)).data.equals(Buffer.alloc(8, 1)))
})

test('connections over the limit are refused; a freed slot is reused', T, async (t) => {
  const { connect, logger, server } = await startServer(t, [memoryExport('disk', DATA)], { maxConnections: 2 })
  const a = await connect()
  await a.handshake()
  const b = await connect()
  await b.handshake()
  assert.equal(server.connections(), 2)
  const refused = await connect()
  assert.ok(await refused.closesWithoutData())
  a.destroy()
  await logger.waitFor(e => e.message === 'nbd connection gone' && e.fields?.open === 1)
  const c = await connect()
  await c.open('disk')
  await checkRead(c, 1, 0, 512)
})

test('close() aborts in-flight reads and closes connections and the socket file', T, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-close-'))
  try {
    const path = join(dir, 'nbd.sock')
    const exp = controlledExport('disk', SIZE)
    const server = createNbdServer({ provider: staticExportProvider([exp]), logger: recordingLogger() })
    await server.listenUnix(path)
    const c = await RawClient.connect(path)
    await c.open('disk')
    c.sendRequest(READ, 1, 0, 4096)
    const pending = await exp.nextRead()
    await server.close()
    assert.ok(pending.signal.aborted)
    await c.closed
    assert.equal(server.connections(), 0)
    await assert.rejects(RawClient.connect(path))
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('listenUnix replaces a stale socket file, refuses a live one and a non-socket path', T, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-listen-'))
  try {
    const path = join(dir, 'nbd.sock')
    // A process that bound the path and died leaves the file behind (python does not unlink on exit).
    await promisify(execFile)('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path)})`])
    assert.ok((await lstat(path)).isSocket())
    const first = createNbdServer({ provider: staticExportProvider([memoryExport('disk', DATA)]), logger: recordingLogger() })
    await first.listenUnix(path)
    assert.equal((await lstat(path)).mode & 0o777, 0o660)
    const second = createNbdServer({ provider: staticExportProvider([memoryExport('disk', DATA)]), logger: recordingLogger() })
    await assert.rejects(second.listenUnix(path), { name: 'NbdSocketPathInUseError' })
    const c = await RawClient.connect(path)
    await c.open('disk')
    await checkRead(c, 1, 0, 100)
    c.destroy()
    await first.close()
    const plain = join(dir, 'plain')
    await writeFile(plain, 'not a socket')
    await assert.rejects(second.listenUnix(plain), { name: 'NbdSocketPathInUseError' })
    assert.equal(await readFile(plain, 'utf8'), 'not a socket')
    await second.close()
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('requests split into small writes and a write payload across chunks are parsed correctly', T, async (t) => {
  const { connect } = await startServer(t, [memoryExport('disk', DATA)])
  const c = await connect()
  await c.open('disk')
  const req = (type: number, handle: number, offset: number, length: number): Buffer => {
    const b = Buffer.alloc(28)
    b.writeUInt32BE(0x25609513, 0)
    b.writeUInt16BE(type, 6)
    b.writeUInt32BE(handle, 12)
    b.writeUInt32BE(offset, 20)
    b.writeUInt32BE(length, 24)
    return b
  }
  const stream = Buffer.concat([
    req(READ, 1, 10, 20), req(WRITE, 2, 0, 50), Buffer.alloc(50, 0x25), req(READ, 3, 999, 1), req(FLUSH, 4, 0, 0)
  ])
  // Each piece is flushed to the kernel before the next, so the server usually sees many small chunks.
  for (let at = 0; at < stream.length; at += 5) {
    await new Promise<void>(resolve => { c.socket.write(stream.subarray(at, at + 5), () => { resolve() }) })
  }
  const lengths: Record<number, number> = { 1: 20, 3: 1 }
  const replies = new Map<number, { error: number, data: Buffer }>()
  for (let i = 0; i < 4; i++) {
    const r = await c.reply(h => lengths[h] ?? 0)
    replies.set(r.handle, r)
  }
  assert.ok(replies.get(1)?.data.equals(DATA.subarray(10, 30)))
  assert.equal(replies.get(2)?.error, EPERM)
  assert.ok(replies.get(3)?.data.equals(DATA.subarray(999, 1000)))
  assert.equal(replies.get(4)?.error, 0)
})

test('listenTcp serves on loopback; a listen signal closes that listener only', T, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-tcp-'))
  const server = createNbdServer({ provider: staticExportProvider([memoryExport('disk', DATA)]), logger: recordingLogger() })
  try {
    const { host, port } = await server.listenTcp('127.0.0.1', 0)
    assert.equal(host, '127.0.0.1')
    assert.ok(port > 0)
    const c = await RawClient.connect(host, port)
    await c.open('disk')
    await checkRead(c, 1, 4096, 8192)

    const path = join(dir, 'nbd.sock')
    const controller = new AbortController()
    await server.listenUnix(path, { signal: controller.signal })
    const u = await RawClient.connect(path)
    await u.open('disk')
    controller.abort()
    await assert.rejects(RawClient.connect(path), 'the unix listener is closed')
    await checkRead(u, 2, 0, 10) // open connections stay
    await checkRead(c, 3, 0, 10)
    c.destroy()
    u.destroy()
  } finally {
    await server.close()
    await rm(dir, { recursive: true, force: true })
  }
})
