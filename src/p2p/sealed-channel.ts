// A sealed frame channel over one TCP socket: the block protocol's frames (wire.ts), each sealed with
// AES-256-GCM, for the data channel (data-channel.ts). Why not the libp2p stream: on this machine kind a
// 64 KiB block costs the noise + yamux + length-prefix stack several times what one OpenSSL AEAD call and
// one socket write cost (STACK.md: 207 vs 1,090 MiB/s per core), and a boot moves ~50 MiB per host each way.
//
// Record: length u32 (plaintext bytes; authenticated as AAD) | ciphertext | tag 16. One key per direction,
// handed out over the noise-secured libp2p stream; the nonce is a per-direction frame counter (12 bytes,
// big-endian), so a dropped, replayed or reordered record fails authentication. Nothing is delivered before
// its tag checked out. Frames arrive by callback (no async iterator per chunk); writes resolve when the
// socket took them (socket.write() true) or drained, so a writer that awaits is bounded by the socket's
// high-water mark.

import { createCipheriv, createDecipheriv, type DecipherGCM } from 'node:crypto'
import type { Socket } from 'node:net'
import { Uint8ArrayList } from 'uint8arraylist'
import { PeerLinkClosedError, WireDecodeError } from './errors.js'

const TAG_BYTES = 16
const HEADER_BYTES = 4
const CIPHER = 'aes-256-gcm'
/** After a clean end, the socket is destroyed this long later whatever the peer does. */
const END_GRACE_MS = 5_000

/** The record authentication failed: tampered, replayed or wrongly keyed. */
export class ChannelAuthError extends WireDecodeError {
  override name = 'ChannelAuthError'
}

export interface SealedChannelInit {
  socket: Socket
  sendKey: Uint8Array
  receiveKey: Uint8Array
  /** Largest plaintext frame accepted from the peer; a larger length closes the channel. */
  maxReceiveFrameBytes: number
  onFrame: (frame: Uint8ArrayList) => void
  /** Called once, when the channel closed (err: why, if not a clean end). */
  onClose: (err?: Error) => void
  /**
   * Where the socket's bytes come from, if not its 'data' events: called once with the channel's receiver
   * (data-channel.ts's client socket, which reads into one reused buffer; the receiver uses each chunk at once).
   */
  receiveFrom?: (receiver: (chunk: Buffer) => void) => void
}

/**
 * Writes the nonce of frame `counter` into `iv` (12 bytes, one per direction: the cipher copies it, and a fresh
 * Buffer per frame was an ArrayBuffer allocation, a few microseconds each on this machine kind).
 */
function nonce (iv: Buffer, counter: number): Buffer {
  // Counters stay below 2^53: at a million frames per second that is 285 years.
  iv.writeUInt32BE(Math.floor(counter / 0x1_0000_0000), 4)
  iv.writeUInt32BE(counter >>> 0, 8)
  return iv
}

export class SealedChannel {
  closed = false
  private sendCounter = 0
  private receiveCounter = 0
  private readonly socket: Socket
  private readonly sendKey: Uint8Array
  private readonly receiveKey: Uint8Array
  // Parser state: the header being read, then the body being deciphered as it arrives.
  private header = Buffer.alloc(HEADER_BYTES)
  private headerHave = 0
  private bodyLeft = -1
  private decipher: DecipherGCM | undefined
  private plain = new Uint8ArrayList()
  private tag = Buffer.alloc(TAG_BYTES)
  private tagHave = 0
  private readonly drainWaiters = new Set<() => void>()
  private readonly sendIv = Buffer.alloc(12)
  private readonly receiveIv = Buffer.alloc(12)

  constructor (private readonly init: SealedChannelInit) {
    this.socket = init.socket
    this.sendKey = init.sendKey
    this.receiveKey = init.receiveKey
    this.socket.setNoDelay(true)
    const receiver = (chunk: Buffer): void => {
      try {
        this.receive(chunk)
      } catch (err) {
        this.destroy(err as Error)
      }
    }
    // The 'data' listener stays with receiveFrom too: it keeps the socket flowing, so its end is seen.
    this.socket.on('data', receiver)
    init.receiveFrom?.(receiver)
    this.socket.on('drain', () => { this.wakeWriters() })
    this.socket.on('error', err => { this.destroy(err) })
    this.socket.on('close', () => { this.destroy() })
    this.socket.on('end', () => { this.destroy() })
  }

  /** Bytes queued in the socket, not yet handed to the kernel. */
  get pendingBytes (): number {
    return this.socket.writableLength
  }

  /** Seals and writes one frame; resolves once the socket accepted it without going over its high-water mark. */
  async write (frame: Uint8Array | Uint8ArrayList, signal?: AbortSignal): Promise<void> {
    if (this.closed) throw new PeerLinkClosedError('data channel is closed')
    const length = frame.byteLength
    const header = Buffer.allocUnsafe(HEADER_BYTES)
    header.writeUInt32BE(length, 0)
    const cipher = createCipheriv(CIPHER, this.sendKey, nonce(this.sendIv, this.sendCounter++), { authTagLength: TAG_BYTES })
    cipher.setAAD(header)
    const parts: Buffer[] = [header]
    if (frame instanceof Uint8Array) parts.push(cipher.update(frame))
    else for (const part of frame) parts.push(cipher.update(part))
    const final = cipher.final()
    if (final.byteLength > 0) parts.push(final)
    parts.push(cipher.getAuthTag())
    // One writev for the whole record.
    this.socket.cork()
    let ok = true
    for (const part of parts) ok = this.socket.write(part)
    this.socket.uncork()
    if (ok || this.closed) return
    await this.waitDrain(signal)
  }

  private async waitDrain (signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    const { promise, resolve, reject } = Promise.withResolvers<void>()
    const onAbort = (): void => { reject(signal?.reason) }
    const wake = (): void => { resolve() }
    this.drainWaiters.add(wake)
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      await promise
    } finally {
      this.drainWaiters.delete(wake)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  private wakeWriters (): void {
    for (const wake of [...this.drainWaiters]) wake()
  }

  private receive (chunk: Buffer): void {
    let at = 0
    while (at < chunk.length && !this.closed) {
      if (this.bodyLeft < 0) {
        const take = Math.min(HEADER_BYTES - this.headerHave, chunk.length - at)
        chunk.copy(this.header, this.headerHave, at, at + take)
        this.headerHave += take
        at += take
        if (this.headerHave < HEADER_BYTES) return
        const length = this.header.readUInt32BE(0)
        if (length > this.init.maxReceiveFrameBytes) throw new WireDecodeError(`data channel frame of ${length} bytes (at most ${this.init.maxReceiveFrameBytes})`)
        this.decipher = createDecipheriv(CIPHER, this.receiveKey, nonce(this.receiveIv, this.receiveCounter++), { authTagLength: TAG_BYTES })
        this.decipher.setAAD(this.header)
        this.bodyLeft = length
        this.tagHave = 0
      }
      if (this.bodyLeft > 0) {
        const take = Math.min(this.bodyLeft, chunk.length - at)
        const out = this.decipher!.update(chunk.subarray(at, at + take))
        if (out.byteLength > 0) this.plain.append(out)
        this.bodyLeft -= take
        at += take
        if (this.bodyLeft > 0) return
      }
      const take = Math.min(TAG_BYTES - this.tagHave, chunk.length - at)
      chunk.copy(this.tag, this.tagHave, at, at + take)
      this.tagHave += take
      at += take
      if (this.tagHave < TAG_BYTES) return
      const decipher = this.decipher!
      decipher.setAuthTag(this.tag)
      try {
        const rest = decipher.final()
        if (rest.byteLength > 0) this.plain.append(rest)
      } catch {
        throw new ChannelAuthError('data channel record failed authentication')
      }
      const frame = this.plain
      this.plain = new Uint8ArrayList()
      this.decipher = undefined
      this.bodyLeft = -1
      this.headerHave = 0
      this.init.onFrame(frame)
    }
  }

  /** Closes: at once with `err` (passed to onClose), else after what was written has been sent. */
  destroy (err?: Error): void {
    if (this.closed) return
    this.closed = true
    if (err !== undefined) this.socket.destroy()
    else {
      if (!this.socket.writableEnded) this.socket.end()
      // A peer that never ends its side does not hold the socket.
      setTimeout(() => { this.socket.destroy() }, END_GRACE_MS).unref()
    }
    this.plain = new Uint8ArrayList()
    this.wakeWriters()
    this.init.onClose(err)
  }
}
