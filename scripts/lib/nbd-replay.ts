// Replays a block-read trace (time_ms,offset,length CSV) one read at a time, as fast as possible, against an
// NBD server (a minimal fixed-newstyle client over node:net: NBD_OPT_GO, simple replies, NBD_CMD_READ) or a
// local file (pread). Used by the testbed benchmark to stand in for a booting VM on each host.
import { connect, type Socket } from 'node:net'
import { open, readFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'

export interface TraceRead { timeMs: number, offset: number, length: number }

export class TraceFormatError extends Error {
  override name = 'TraceFormatError'
}

export class NbdClientError extends Error {
  override name = 'NbdClientError'
}

const MAX_TRACE_READS = 10_000_000
const MAX_READ_BYTES = 32 * 1024 * 1024

/** Parses `time_ms,offset,length` lines (a header line and blank lines are skipped). */
export function parseTrace (text: string): TraceRead[] {
  const reads: TraceRead[] = []
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim()
    if (line === '' || /^[a-z_]/i.test(line)) continue
    const [t, o, l] = line.split(',').map(Number)
    if (![t, o, l].every((n) => Number.isSafeInteger(n) || Number.isFinite(n)) || o < 0 || l <= 0 || l > MAX_READ_BYTES) {
      throw new TraceFormatError(`line ${i + 1}: expected time_ms,offset,length: ${line}`)
    }
    reads.push({ timeMs: t, offset: o, length: l })
    if (reads.length > MAX_TRACE_READS) throw new TraceFormatError(`more than ${MAX_TRACE_READS} reads`)
  }
  return reads
}

export async function loadTrace (path: string): Promise<TraceRead[]> {
  return parseTrace(await readFile(path, 'utf8'))
}

/** Bytes covered by the union of the reads' ranges. */
export function distinctBytes (reads: TraceRead[]): number {
  const ranges = reads.map((r) => [r.offset, r.offset + r.length] as const).sort((a, b) => a[0] - b[0])
  let total = 0
  let curStart = -1
  let curEnd = -1
  for (const [s, e] of ranges) {
    if (s > curEnd) {
      if (curEnd > curStart) total += curEnd - curStart
      curStart = s
      curEnd = e
    } else if (e > curEnd) curEnd = e
  }
  if (curEnd > curStart) total += curEnd - curStart
  return total
}

export interface ReplayResult {
  reads: number
  bytes: number
  elapsedMs: number
  /** sha256 of all bytes read, in trace order: equal across hosts iff every host read the same data. */
  digest: string
  /** The longest single read, in ms (a stall). */
  maxReadMs: number
  /** The first read, in ms: what a VM waits before its first sector (an agent's attach is in it). */
  firstReadMs: number
  /** Median and 90th percentile of the single reads' times, ms. */
  readMsP50: number
  readMsP90: number
  /** Reads that took over SLOW_READ_MS: when each began (ms after the replay began) and how long it took. */
  slowReads: SlowRead[]
}

export interface SlowRead { atMs: number, ms: number }
/** Reads slower than this are listed with their start (a churn run tells load stalls from churn stalls). */
export const SLOW_READ_MS = 100
const MAX_SLOW_READS = 2048

// NBD protocol constants (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
const NBDMAGIC = 0x4e42444d41474943n
const IHAVEOPT = 0x49484156454f5054n
const REPLY_MAGIC = 0x3e889045565a9n
const FLAG_FIXED_NEWSTYLE = 1
const FLAG_NO_ZEROES = 2
const OPT_GO = 7
const REP_ACK = 1
const REP_INFO = 3
const INFO_EXPORT = 0
const REQUEST_MAGIC = 0x25609513
const SIMPLE_REPLY_MAGIC = 0x67446698
const CMD_READ = 0
const CMD_DISC = 2

/** Buffered reader of exact byte counts from a socket, with a deadline per read. */
class SocketReader {
  private chunks: Buffer[] = []
  private buffered = 0
  private waiter?: () => void
  private failure?: Error

  constructor (private readonly sock: Socket) {
    sock.on('data', (b: Buffer) => { this.chunks.push(b); this.buffered += b.length; this.wake() })
    sock.on('error', (err) => { this.failure = new NbdClientError(`socket: ${err.message}`); this.wake() })
    sock.on('close', () => { this.failure ??= new NbdClientError('server closed the connection'); this.wake() })
  }

  private wake (): void { const w = this.waiter; this.waiter = undefined; w?.() }

  async read (n: number, timeoutMs: number): Promise<Buffer> {
    const deadline = performance.now() + timeoutMs
    while (this.buffered < n) {
      if (this.failure !== undefined) throw this.failure
      const left = deadline - performance.now()
      if (left <= 0) throw new NbdClientError(`timed out waiting for ${n} bytes`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiter = () => { clearTimeout(t); resolve() }
      })
    }
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks)
    const out = all.subarray(0, n)
    const rest = all.subarray(n)
    this.chunks = rest.length > 0 ? [rest] : []
    this.buffered = rest.length
    return out
  }
}

export interface NbdTarget {
  /** A unix socket path, or host+port for TCP. */
  socketPath?: string
  host?: string
  port?: number
  exportName?: string
}

export interface NbdConnection {
  sizeBytes: number
  read: (offset: number, length: number) => Promise<Buffer>
  close: () => Promise<void>
}

/** Connects and negotiates (fixed newstyle, NBD_OPT_GO) an NBD export. */
export async function nbdConnect (target: NbdTarget, opts: { timeoutMs?: number, signal?: AbortSignal } = {}): Promise<NbdConnection> {
  const timeoutMs = opts.timeoutMs ?? 30_000
  opts.signal?.throwIfAborted()
  const sock = target.socketPath !== undefined
    ? connect({ path: target.socketPath })
    : connect({ host: target.host ?? '127.0.0.1', port: target.port ?? 10809 })
  sock.setNoDelay(true)
  const onAbort = (): void => { sock.destroy(new NbdClientError('aborted')) }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  const rd = new SocketReader(sock)
  try {
    const hello = await rd.read(18, timeoutMs)
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdClientError('not a fixed-newstyle NBD server')
    const serverFlags = hello.readUInt16BE(16)
    if ((serverFlags & FLAG_FIXED_NEWSTYLE) === 0) throw new NbdClientError('server lacks fixed newstyle')
    const clientFlags = Buffer.alloc(4)
    clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES))
    const name = Buffer.from(target.exportName ?? '', 'utf8')
    const data = Buffer.alloc(4 + name.length + 2 + 2)
    data.writeUInt32BE(name.length, 0)
    name.copy(data, 4)
    data.writeUInt16BE(1, 4 + name.length) // one info request
    data.writeUInt16BE(INFO_EXPORT, 6 + name.length)
    const opt = Buffer.alloc(16)
    opt.writeBigUInt64BE(IHAVEOPT, 0)
    opt.writeUInt32BE(OPT_GO, 8)
    opt.writeUInt32BE(data.length, 12)
    sock.write(Buffer.concat([clientFlags, opt, data]))
    let sizeBytes = -1
    for (let i = 0; i < 64; i++) {
      const h = await rd.read(20, timeoutMs)
      if (h.readBigUInt64BE(0) !== REPLY_MAGIC) throw new NbdClientError('bad option reply magic')
      const type = h.readUInt32BE(12)
      const len = h.readUInt32BE(16)
      if (len > 64 * 1024) throw new NbdClientError(`option reply too long: ${len}`)
      const payload = len > 0 ? await rd.read(len, timeoutMs) : Buffer.alloc(0)
      if ((type & 0x80000000) !== 0) throw new NbdClientError(`NBD_OPT_GO refused (${type.toString(16)}): ${payload.subarray(0).toString('utf8')}`)
      if (type === REP_INFO && payload.length >= 12 && payload.readUInt16BE(0) === INFO_EXPORT) sizeBytes = Number(payload.readBigUInt64BE(2))
      if (type === REP_ACK) break
    }
    if (sizeBytes < 0) throw new NbdClientError('server sent no export size')
    let handle = 0n
    return {
      sizeBytes,
      read: async (offset, length) => {
        if (offset + length > sizeBytes) throw new NbdClientError(`read ${offset}+${length} past the end (${sizeBytes})`)
        const req = Buffer.alloc(28)
        req.writeUInt32BE(REQUEST_MAGIC, 0)
        req.writeUInt16BE(0, 4)
        req.writeUInt16BE(CMD_READ, 6)
        req.writeBigUInt64BE(++handle, 8)
        req.writeBigUInt64BE(BigInt(offset), 16)
        req.writeUInt32BE(length, 24)
        sock.write(req)
        const rep = await rd.read(16, timeoutMs)
        if (rep.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new NbdClientError('bad reply magic (structured replies are not negotiated)')
        const err = rep.readUInt32BE(4)
        if (rep.readBigUInt64BE(8) !== handle) throw new NbdClientError('reply handle mismatch')
        if (err !== 0) throw new NbdClientError(`read ${offset}+${length} failed: errno ${err}`)
        return Buffer.from(await rd.read(length, timeoutMs))
      },
      close: async () => {
        const req = Buffer.alloc(28)
        req.writeUInt32BE(REQUEST_MAGIC, 0)
        req.writeUInt16BE(CMD_DISC, 6)
        sock.end(req)
        opts.signal?.removeEventListener('abort', onAbort)
        await new Promise<void>((resolve) => { if (sock.closed) resolve(); else { sock.once('close', () => { resolve() }); setTimeout(() => { sock.destroy(); resolve() }, 2000).unref() } })
      }
    }
  } catch (err) {
    opts.signal?.removeEventListener('abort', onAbort)
    sock.destroy()
    throw err
  }
}

type ReadFn = (offset: number, length: number) => Promise<Buffer>

/** Replay options: `think` issues each read at its trace time (the boot's own pace) instead of back to back. */
export interface ReplayOptions { think?: boolean }

async function replayWith (reads: readonly TraceRead[], read: ReadFn, signal?: AbortSignal, options: ReplayOptions = {}): Promise<ReplayResult> {
  const hash = createHash('sha256')
  let bytes = 0
  let maxReadMs = 0
  const times: number[] = []
  const slowReads: SlowRead[] = []
  const start = performance.now()
  const firstMs = reads[0]?.timeMs ?? 0
  for (const r of reads) {
    signal?.throwIfAborted()
    if (options.think === true) {
      // Bounded by the trace's own length; a read that is late (the previous one stalled) goes at once.
      const waitMs = r.timeMs - firstMs - (performance.now() - start)
      if (waitMs > 0) await new Promise<void>((resolve) => setTimeout(resolve, waitMs))
    }
    const t0 = performance.now()
    const data = await read(r.offset, r.length)
    const dt = performance.now() - t0
    times.push(dt)
    if (dt > SLOW_READ_MS && slowReads.length < MAX_SLOW_READS) slowReads.push({ atMs: Math.round(t0 - start), ms: Math.round(dt) })
    if (dt > maxReadMs) maxReadMs = dt
    hash.update(data)
    bytes += data.length
  }
  const firstReadMs = times[0] ?? 0
  times.sort((a, b) => a - b)
  const pct = (q: number): number => times.length === 0 ? 0 : times[Math.min(times.length - 1, Math.floor(q * times.length))]
  return { reads: reads.length, bytes, elapsedMs: performance.now() - start, digest: hash.digest('hex'), maxReadMs, firstReadMs, readMsP50: pct(0.5), readMsP90: pct(0.9), slowReads }
}

/** Replays the reads one at a time over an NBD connection. */
export async function replayNbd (reads: readonly TraceRead[], conn: NbdConnection, signal?: AbortSignal, options: ReplayOptions = {}): Promise<ReplayResult> {
  return await replayWith(reads, conn.read, signal, options)
}

/**
 * Replays the reads one at a time over NBD, surviving the loss of the server: when a read fails because the
 * connection broke, `onLost(err)` is awaited (e.g. until the server was restarted), a new connection is made
 * with `connect()` and the same read is retried, so the digest covers exactly the trace's reads. At most
 * `maxReconnects` times; any other error, or one more loss, fails the replay. The stall of a retried read
 * (loss, wait, reconnect, read) counts as one read in maxReadMs.
 */
export async function replayNbdResumable (reads: TraceRead[], opts: {
  connect: () => Promise<NbdConnection>
  onLost: (err: Error) => Promise<void>
  maxReconnects?: number
  signal?: AbortSignal
  think?: boolean
}): Promise<ReplayResult & { reconnects: number }> {
  const maxReconnects = opts.maxReconnects ?? 3
  let conn = await opts.connect()
  let reconnects = 0
  try {
    const result = await replayWith(reads, async (offset, length) => {
      while (true) {
        try {
          return await conn.read(offset, length)
        } catch (err) {
          const lost = err instanceof NbdClientError && /closed|socket/.test(err.message)
          if (!lost || reconnects >= maxReconnects) throw err
          reconnects++
          conn.close().catch(() => {})
          await opts.onLost(err)
          conn = await opts.connect()
        }
      }
    }, opts.signal, { think: opts.think })
    return { ...result, reconnects }
  } finally {
    await conn.close().catch(() => {})
  }
}

/** Replays the reads one at a time with pread on a local file (after a full download). */
export async function replayFile (reads: TraceRead[], path: string, signal?: AbortSignal, options: ReplayOptions = {}): Promise<ReplayResult> {
  const fh = await open(path, 'r')
  try {
    return await replayWith(reads, async (offset, length) => {
      const buf = Buffer.alloc(length)
      const { bytesRead } = await fh.read(buf, 0, length, offset)
      if (bytesRead !== length) throw new NbdClientError(`short read at ${offset}: ${bytesRead}/${length}`)
      return buf
    }, signal, options)
  } finally {
    await fh.close()
  }
}
