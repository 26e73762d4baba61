// The transmission phase of one connection (proto.md "Transmission", simple replies only).
//
// Requests are parsed in place from received chunks and served concurrently: every READ calls the export at
// once and its reply goes out when the read completes, in completion order. A request counts as in flight
// from parsing until its reply is flushed to the kernel; over the request or byte bound, the socket is
// paused (TCP/unix backpressure to the client) until replies drain. Replies of one event-loop turn are
// corked together, so header and data (and neighbouring small replies) leave in one writev.
//
// WRITE payloads are skipped as they stream in, never buffered; writes, trims and write-zeroes get EPERM.

import type { Socket } from 'node:net'
import type { NbdExport } from '../types.js'
import type { BufferReleasingExport } from './buffer-pool.js'
import type { ByteQueue } from './byte-queue.js'
import { readU64 } from './codec.js'
import {
  NBD_CMD_DISC, NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL, NBD_EIO, NBD_EPERM, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES
} from './constants.js'
import { NbdExportReadLengthError, NbdProtocolError } from './errors.js'
import type { NbdLogger } from './logger.js'

export interface TransmissionConfig {
  maxPayloadBytes: number
  maxInFlightRequests: number
  maxInFlightBytes: number
  /** After the client ends its side, requests still in flight get this long before the connection is dropped. */
  halfCloseGraceMs: number
  logger: NbdLogger
}

export interface TransmissionStats {
  requests: number
  readBytes: number
  errors: number
}

/**
 * Serves requests on `socket` until the client disconnects, sends NBD_CMD_DISC, or `signal` aborts (then
 * in-flight reads are aborted through the signal passed to the export and the caller destroys the socket).
 * Resolves once the socket is closed.
 */
export function serveTransmission (
  socket: Socket, queue: ByteQueue, exp: NbdExport, config: TransmissionConfig, signal: AbortSignal,
  connectionId: number
): Promise<TransmissionStats> {
  return new Transmission(socket, queue, exp, config, signal, connectionId).done
}

class Transmission {
  readonly done: Promise<TransmissionStats>
  private resolveDone!: (stats: TransmissionStats) => void
  readonly stats: TransmissionStats = { requests: 0, readBytes: 0, errors: 0 }

  private inFlightRequests = 0
  private inFlightBytes = 0
  /** Remaining bytes of a refused WRITE payload to drop. */
  private skipBytes = 0
  private paused = false
  /** No more requests will be parsed: DISC received, protocol error, or socket closed. */
  private inputDone = false
  /** The client ended its side: requests already queued are still served. */
  private inputEnded = false
  private closed = false
  private ending = false
  private corked = false
  private graceTimer: NodeJS.Timeout | undefined
  private readonly sizeBytes: number
  private readonly releaseBuffer: ((data: Uint8Array) => void) | undefined

  constructor (
    private readonly socket: Socket,
    private readonly queue: ByteQueue,
    private readonly exp: NbdExport,
    private readonly config: TransmissionConfig,
    private readonly signal: AbortSignal,
    private readonly connectionId: number
  ) {
    this.sizeBytes = exp.sizeBytes
    const releasing = exp as NbdExport & BufferReleasingExport
    this.releaseBuffer = releasing.releaseBuffer?.bind(exp)
    this.done = new Promise(resolve => { this.resolveDone = resolve })
    socket.on('data', this.onData)
    socket.on('end', this.onEnd)
    socket.on('close', this.onClose)
    if (socket.destroyed) {
      this.onClose()
      return
    }
    this.pump()
    if (!this.inputDone && !this.paused) socket.resume()
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.inputDone) return
    this.queue.push(chunk)
    this.pump()
  }

  private readonly onEnd = (): void => {
    this.inputEnded = true
    this.pump()
    // EOF usually means the client is gone (NBD clients do not half-close), but a socket cannot tell a
    // half-close from a vanished peer: answer what completes soon, then drop the rest (aborting its reads).
    if (!this.ending && !this.closed) {
      this.graceTimer = setTimeout(() => {
        this.config.logger.debug('nbd client ended its side; dropping requests still in flight', {
          connection: this.connectionId, inFlight: this.inFlightRequests
        })
        this.socket.destroy()
      }, this.config.halfCloseGraceMs)
    }
  }

  private readonly onClose = (): void => {
    if (this.closed) return
    this.closed = true
    this.inputDone = true
    clearTimeout(this.graceTimer)
    this.socket.off('data', this.onData)
    this.socket.off('end', this.onEnd)
    this.queue.drain()
    this.resolveDone(this.stats)
  }

  /** Parses and dispatches queued requests until the queue runs dry or an in-flight bound is hit. */
  private pump (): void {
    const queue = this.queue
    while (!this.inputDone) {
      if (this.skipBytes > 0) {
        this.skipBytes -= queue.skip(this.skipBytes)
        if (this.skipBytes > 0) break
        continue
      }
      if (this.inFlightRequests >= this.config.maxInFlightRequests || this.inFlightBytes >= this.config.maxInFlightBytes) {
        if (!this.paused) {
          this.paused = true
          this.socket.pause()
        }
        return
      }
      if (queue.length < REQUEST_HEADER_BYTES) break
      const { buf, offset: at } = queue.contiguous(REQUEST_HEADER_BYTES)
      if (buf.readUInt32BE(at) !== NBD_REQUEST_MAGIC) {
        this.protocolError(new NbdProtocolError(`bad request magic 0x${buf.readUInt32BE(at).toString(16)}`))
        return
      }
      const flags = buf.readUInt16BE(at + 4)
      const type = buf.readUInt16BE(at + 6)
      const handleHi = buf.readUInt32BE(at + 8)
      const handleLo = buf.readUInt32BE(at + 12)
      const offset = readU64(buf, at + 16)
      const length = buf.readUInt32BE(at + 24)
      queue.skip(REQUEST_HEADER_BYTES)
      this.stats.requests++
      this.dispatch(flags, type, handleHi, handleLo, offset, length)
    }
    if (this.paused && !this.inputDone) {
      this.paused = false
      this.socket.resume()
    }
    this.maybeFinish()
  }

  /** Once no more requests can come and every reply is flushed, close our side. */
  private maybeFinish (): void {
    if (this.inFlightRequests > 0 || this.paused || this.ending || this.closed) return
    if (!this.inputDone && !this.inputEnded) return
    if (!this.inputDone && (this.queue.length > 0 || this.skipBytes > 0)) {
      this.config.logger.debug('nbd client ended its side mid-request', { connection: this.connectionId })
    }
    this.ending = true
    // After DISC the client may keep its side open: destroy once our FIN and all replies are out.
    this.socket.end(() => { this.socket.destroy() })
  }

  private dispatch (flags: number, type: number, handleHi: number, handleLo: number, offset: number, length: number): void {
    // FUA is the only flag a client may send us (and only meaningful on writes we refuse anyway).
    const badFlags = (flags & ~NBD_CMD_FLAG_FUA) !== 0
    switch (type) {
      case NBD_CMD_READ:
        if (badFlags || length === 0 || length > this.config.maxPayloadBytes || offset + length > this.sizeBytes) {
          this.replyError(handleHi, handleLo, NBD_EINVAL)
          return
        }
        this.startRead(handleHi, handleLo, offset, length)
        return
      case NBD_CMD_WRITE:
        if (length > this.config.maxPayloadBytes) {
          // The client broke the advertised maximum; skipping gigabytes is not worth it (proto.md allows a hard close).
          this.protocolError(new NbdProtocolError(`write payload of ${length} bytes over ${this.config.maxPayloadBytes}`))
          return
        }
        this.skipBytes = length
        this.replyError(handleHi, handleLo, NBD_EPERM)
        return
      case NBD_CMD_TRIM:
      case NBD_CMD_WRITE_ZEROES:
        this.replyError(handleHi, handleLo, NBD_EPERM)
        return
      case NBD_CMD_FLUSH:
        // Read-only: nothing is ever dirty.
        this.replyError(handleHi, handleLo, badFlags ? NBD_EINVAL : 0)
        return
      case NBD_CMD_DISC:
        // Serve what is in flight, then close; the client sends nothing after DISC.
        this.inputDone = true
        this.queue.drain()
        return
      default:
        this.replyError(handleHi, handleLo, NBD_EINVAL)
    }
  }

  private startRead (handleHi: number, handleLo: number, offset: number, length: number): void {
    this.inFlightRequests++
    this.inFlightBytes += length
    let pending: Promise<Uint8Array>
    try {
      pending = this.exp.read(offset, length, this.signal)
    } catch (err) {
      pending = Promise.reject(err)
    }
    pending.then(
      (data) => {
        if (this.closed) {
          this.releaseBuffer?.(data)
          return this.release(length)
        }
        if (data.length !== length) {
          this.config.logger.error('nbd export read returned the wrong length', {
            connection: this.connectionId,
            export: this.exp.name,
            offset,
            length,
            error: new NbdExportReadLengthError(`expected ${length} bytes, got ${data.length}`)
          })
          this.stats.errors++
          this.releaseBuffer?.(data)
          this.send(handleHi, handleLo, NBD_EIO, undefined, length)
          return
        }
        this.stats.readBytes += length
        this.send(handleHi, handleLo, 0, data, length)
      },
      (err: unknown) => {
        if (this.closed || this.signal.aborted) return this.release(length)
        this.stats.errors++
        this.config.logger.warn('nbd export read failed', { connection: this.connectionId, export: this.exp.name, offset, length, error: err })
        this.send(handleHi, handleLo, NBD_EIO, undefined, length)
      }
    )
  }

  private replyError (handleHi: number, handleLo: number, error: number): void {
    this.inFlightRequests++
    if (error !== 0) this.stats.errors++
    this.send(handleHi, handleLo, error, undefined, 0)
  }

  /** Writes one simple reply; the request stays in flight until the kernel has taken the bytes. */
  private send (handleHi: number, handleLo: number, error: number, data: Uint8Array | undefined, bytes: number): void {
    const socket = this.socket
    if (this.closed || socket.destroyed) {
      if (data !== undefined) this.releaseBuffer?.(data)
      return this.release(bytes)
    }
    const header = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES)
    header.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0)
    header.writeUInt32BE(error, 4)
    header.writeUInt32BE(handleHi, 8)
    header.writeUInt32BE(handleLo, 12)
    if (!this.corked) {
      this.corked = true
      socket.cork()
      setImmediate(this.uncork)
    }
    if (data === undefined) {
      socket.write(header, () => { this.release(bytes) })
    } else {
      socket.write(header)
      socket.write(data, () => {
        // The kernel has the bytes (or the write was cancelled): the buffer is free for reuse.
        this.releaseBuffer?.(data)
        this.release(bytes)
      })
    }
  }

  private readonly uncork = (): void => {
    this.corked = false
    this.socket.uncork()
  }

  private release (bytes: number): void {
    this.inFlightRequests--
    this.inFlightBytes -= bytes
    if (this.paused) this.pump()
    else this.maybeFinish()
  }

  private protocolError (err: Error): void {
    this.config.logger.warn('nbd protocol error, closing connection', { connection: this.connectionId, error: err })
    this.inputDone = true
    this.queue.drain()
    this.socket.destroy()
  }
}
