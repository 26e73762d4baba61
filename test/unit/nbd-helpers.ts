// Test helpers for the NBD server: a raw NBD client over node:net (to send exactly the bytes a test wants,
// malformed ones included) and exports whose reads a test controls.

import { connect, type Socket } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ByteQueue } from '../../src/blockstack/nbd/byte-queue.js'
import type { NbdExport } from '../../src/blockstack/types.js'
import type { NbdLogger } from '../../src/blockstack/nbd/logger.js'

export const IHAVEOPT = Buffer.from('IHAVEOPT', 'ascii')
export const NBDMAGIC = Buffer.from('NBDMAGIC', 'ascii')

export class ConnectionClosedError extends Error {
  override name = 'ConnectionClosedError'
}

/** A byte-level NBD client. Reads wait for data or reject once the server closes. */
export class RawClient {
  private readonly queue = new ByteQueue()
  private waiter: (() => void) | undefined
  private ended = false
  readonly closed: Promise<void>

  private constructor (readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => { this.queue.push(chunk); this.wake() })
    socket.on('error', () => {})
    this.closed = new Promise(resolve => {
      socket.on('close', () => { this.ended = true; this.wake(); resolve() })
    })
    socket.on('end', () => { this.ended = true; this.wake() })
  }

  /** Connects to a unix socket path, or to TCP when given a port. */
  static async connect (path: string, port?: number): Promise<RawClient> {
    const socket = port === undefined ? connect(path) : connect(port, path)
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    return new RawClient(socket)
  }

  private wake (): void {
    const w = this.waiter
    this.waiter = undefined
    w?.()
  }

  async read (n: number): Promise<Buffer> {
    while (this.queue.length < n) {
      if (this.ended) throw new ConnectionClosedError(`closed with ${this.queue.length}/${n} bytes`)
      await new Promise<void>(resolve => { this.waiter = resolve })
    }
    return Buffer.from(this.queue.take(n))
  }

  /** Resolves true when the server closed without sending anything more. */
  async closesWithoutData (): Promise<boolean> {
    await this.closed
    return this.queue.length === 0
  }

  write (buf: Buffer): void { this.socket.write(buf) }

  /** Reads the greeting, sends client flags; returns the handshake flags. */
  async handshake (clientFlags = 3): Promise<number> {
    const greeting = await this.read(18)
    if (!greeting.subarray(0, 8).equals(NBDMAGIC) || !greeting.subarray(8, 16).equals(IHAVEOPT)) throw new Error('bad greeting')
    const flags = Buffer.alloc(4)
    flags.writeUInt32BE(clientFlags)
    this.write(flags)
    return greeting.readUInt16BE(16)
  }

  sendOption (option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const header = Buffer.alloc(16)
    IHAVEOPT.copy(header, 0)
    header.writeUInt32BE(option, 8)
    header.writeUInt32BE(declaredLength, 12)
    this.write(Buffer.concat([header, data]))
  }

  async optionReply (): Promise<{ option: number, type: number, data: Buffer }> {
    const header = await this.read(20)
    if (header.readUInt32BE(0) !== 0x0003e889 || header.readUInt32BE(4) !== 0x045565a9) throw new Error('bad option reply magic')
    const length = header.readUInt32BE(16)
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: length > 0 ? await this.read(length) : Buffer.alloc(0) }
  }

  /** Sends INFO (6) or GO (7); returns every reply up to and including the final one. */
  async info (name: string, infoTypes: number[] = [], option = 7): Promise<Array<{ type: number, data: Buffer }>> {
    const nameBytes = Buffer.from(name, 'utf8')
    const data = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infoTypes.length)
    data.writeUInt32BE(nameBytes.length, 0)
    nameBytes.copy(data, 4)
    data.writeUInt16BE(infoTypes.length, 4 + nameBytes.length)
    infoTypes.forEach((t, i) => data.writeUInt16BE(t, 4 + nameBytes.length + 2 + 2 * i))
    this.sendOption(option, data)
    const replies: Array<{ type: number, data: Buffer }> = []
    for (;;) {
      const r = await this.optionReply()
      replies.push({ type: r.type, data: r.data })
      if (r.type === 1 || r.type >= 0x80000000) return replies
    }
  }

  /** Handshake plus GO on `name`; throws if GO fails. */
  async open (name: string): Promise<void> {
    await this.handshake()
    const replies = await this.info(name)
    if (replies[replies.length - 1].type !== 1) throw new Error(`GO failed: 0x${replies[replies.length - 1].type.toString(16)}`)
  }

  sendRequest (type: number, handle: number, offset: number, length: number, flags = 0, payload?: Buffer): void {
    const buf = Buffer.alloc(28)
    buf.writeUInt32BE(0x25609513, 0)
    buf.writeUInt16BE(flags, 4)
    buf.writeUInt16BE(type, 6)
    buf.writeUInt32BE(0, 8)
    buf.writeUInt32BE(handle, 12)
    buf.writeUInt32BE(Math.floor(offset / 2 ** 32), 16)
    buf.writeUInt32BE(offset >>> 0, 20)
    buf.writeUInt32BE(length, 24)
    this.write(payload === undefined ? buf : Buffer.concat([buf, payload]))
  }

  /** Reads one simple reply; `dataLength(handle)` tells how many data bytes follow a successful one. */
  async reply (dataLength: (handle: number) => number = () => 0): Promise<{ error: number, handle: number, data: Buffer }> {
    const header = await this.read(16)
    if (header.readUInt32BE(0) !== 0x67446698) throw new Error('bad reply magic')
    const error = header.readUInt32BE(4)
    const handle = header.readUInt32BE(12)
    const n = error === 0 ? dataLength(handle) : 0
    return { error, handle, data: n > 0 ? await this.read(n) : Buffer.alloc(0) }
  }

  destroy (): void { this.socket.destroy() }
}

/** An export over an in-memory buffer. */
export function memoryExport (name: string, data: Buffer, description?: string): NbdExport {
  return {
    name,
    description,
    sizeBytes: data.length,
    read: async (offset, length) => Buffer.from(data.subarray(offset, offset + length))
  }
}

export interface PendingRead {
  offset: number
  length: number
  signal: AbortSignal
  resolve: (data: Uint8Array) => void
  reject: (err: Error) => void
}

/** An export whose reads stay pending until the test resolves them; `nextRead()` waits for the next call. */
export function controlledExport (name: string, sizeBytes: number): NbdExport & { nextRead: () => Promise<PendingRead>, started: PendingRead[] } {
  const started: PendingRead[] = []
  let consumed = 0
  let waiter: (() => void) | undefined
  return {
    name,
    sizeBytes,
    started,
    read (offset, length, signal) {
      return new Promise<Uint8Array>((resolve, reject) => {
        started.push({ offset, length, signal, resolve, reject })
        const w = waiter
        waiter = undefined
        w?.()
      })
    },
    async nextRead () {
      while (started.length <= consumed) await new Promise<void>(resolve => { waiter = resolve })
      return started[consumed++]
    }
  }
}

/** Deterministic bytes: byte i is a function of i, so any range can be checked without the whole image. */
export function patternBytes (offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) {
    const x = offset + i
    buf[i] = (x * 2654435761 + (x >>> 8) * 40503) >>> 24
  }
  return buf
}

export interface LogEntry { level: string, message: string, fields?: Record<string, unknown> }

/** A logger that records entries; `waitFor` resolves on the n-th matching entry (already logged or future). */
export function recordingLogger (): NbdLogger & { entries: LogEntry[], waitFor: (match: (e: LogEntry) => boolean, count?: number) => Promise<LogEntry> } {
  const entries: LogEntry[] = []
  const waiters = new Set<() => void>()
  const at = (level: string) => (message: string, fields?: Record<string, unknown>) => {
    entries.push({ level, message, fields })
    for (const w of [...waiters]) w()
  }
  async function waitFor (match: (e: LogEntry) => boolean, count = 1): Promise<LogEntry> {
    for (;;) {
      const found = entries.filter(match)
      if (found.length >= count) return found[count - 1]
      await new Promise<void>(resolve => {
        const w = (): void => { waiters.delete(w); resolve() }
        waiters.add(w)
      })
    }
  }
  return { entries, waitFor, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

/** The error name carried in a log entry's `error` field. */
export function errorName (e: LogEntry): string | undefined {
  const err = e.fields?.error
  return err instanceof Error ? err.name : undefined
}

export async function withTempDir<T> (fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'))
  try {
    return await fn(dir)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
