// Client side of /vmthunder/blocks/1: one long-lived stream to a peer, opened on first use and reused by every
// request (opening a stream costs about 1.4 ms of protocol negotiation). Requests carry ids, so many are in
// flight at once; a reader loop dispatches response frames to them. The link measures what the scheduler
// needs: smoothed RTT (from pings and admissions) and receive throughput (bytes over the busy time between
// frames).

import '../polyfill.js'
import { setMaxListeners } from 'node:events'
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import type { PeerId, Stream } from '@libp2p/interface'
import { MAX_BLOCK_SIZE_BYTES } from '../blockstack/manifest.js'
import type { Logger } from '../blockstack/cache.js'
import { BlocksUnavailableError, PeerBusyError, PeerLinkClosedError, WireDecodeError } from './errors.js'
import {
  BLOCKS_PROTOCOL, BlockStatus, ErrorCode, FrameType, MAX_INDEXES_PER_GET, decodeServerFrame, encodeClientFrame,
  type Priority, type ServerFrame
} from './wire.js'
import type { P2PNode } from './node.js'
import { systemClock, type Clock } from './clock.js'
import type { AdmitReply } from './block-server.js'
import { SealedChannel } from './sealed-channel.js'
import { connectDataChannel, type DataChannelOffer } from './data-channel.js'

export const LINK_OPEN_TIMEOUT_MS = 10_000
/** Largest response frame: one block of the largest size, or a frame budget's worth, plus its header. */
export const MAX_RESPONSE_FRAME_BYTES = MAX_BLOCK_SIZE_BYTES + 8 + MAX_INDEXES_PER_GET * 9
const READ_BUFFER_BYTES = 48 * 1024 * 1024
const EWMA_ALPHA = 0.2

export type BlockCallback = (index: number, data: Uint8Array | null) => void

interface Pending {
  kind: 'get' | 'admit' | 'ping' | 'channel'
  /** Sent on the data channel (a CANCEL must follow it there). */
  onChannel: boolean
  sentAtMs: number
  resolve: (value: any) => void
  reject: (err: Error) => void
  onBlock?: BlockCallback
  received?: Map<number, Uint8Array | null>
  expected?: number
}

export interface PeerLinkOptions {
  /** Ask the peer for a data channel (data-channel.ts) once the stream is open; requests use it once it is up. */
  dataChannel?: boolean
}

/** How long asking for and connecting a data channel may take before the link stays on its stream. */
export const CHANNEL_SETUP_TIMEOUT_MS = 5_000
/** A failed set-up is tried again after 5, 10, 20, 40 s; then the link stays on its stream. */
export const CHANNEL_RETRY_BASE_MS = 5_000
export const CHANNEL_MAX_ATTEMPTS = 5

export class PeerLink {
  readonly peerId: string
  rttMs: number | undefined
  /** When rttMs was last sampled (clock ms). */
  rttSampledAtMs: number | undefined
  throughputBytesPerS: number | undefined
  /** When the last frame of any kind arrived from the peer (clock ms; -Infinity before the first). */
  lastHeardAtMs = -Infinity
  closed = false
  private stream: Stream | undefined
  private lp: LengthPrefixedStream<Stream> | undefined
  private opening: Promise<void> | undefined
  private nextReqId = 1
  private readonly pending = new Map<number, Pending>()
  private lastFrameAtMs = 0
  private readonly controller = new AbortController()
  private channel: SealedChannel | undefined
  /** Frames received on the data channel (tests and status). */
  channelFrames = 0

  constructor (private readonly node: P2PNode, private readonly remote: PeerId, private readonly logger: Logger,
    private readonly clock: Clock = systemClock, private readonly options: PeerLinkOptions = {}) {
    this.peerId = remote.toString()
    // Each write waiting for the stream to drain listens on it (bounded by the requests in flight).
    setMaxListeners(Infinity, this.controller.signal)
  }

  /** Requests in flight. */
  get inFlight (): number {
    return this.pending.size
  }

  private async open (): Promise<void> {
    if (this.lp !== undefined) return
    if (this.closed) throw new PeerLinkClosedError(`link to ${this.peerId} is closed`)
    this.opening ??= (async () => {
      const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(LINK_OPEN_TIMEOUT_MS)])
      const stream = await this.node.dialProtocol(this.remote, BLOCKS_PROTOCOL, { signal })
      if (this.closed) {
        stream.abort(new PeerLinkClosedError('link closed while opening'))
        throw new PeerLinkClosedError(`link to ${this.peerId} is closed`)
      }
      this.stream = stream
      this.lp = lpStream(stream, { maxDataLength: MAX_RESPONSE_FRAME_BYTES, maxBufferSize: READ_BUFFER_BYTES })
      void this.readLoop(this.lp)
      if (this.options.dataChannel === true) void this.upgrade()
    })()
    try {
      await this.opening
    } catch (err) {
      this.close(err as Error)
      throw err
    }
  }

  private async readLoop (lp: LengthPrefixedStream<Stream>): Promise<void> {
    try {
      while (!this.closed) {
        const data = await lp.read({ signal: this.controller.signal })
        const now = this.clock.nowMs()
        this.lastHeardAtMs = now
        const frame = decodeServerFrame(data, MAX_BLOCK_SIZE_BYTES)
        this.onFrame(frame, data.byteLength, now)
      }
    } catch (err) {
      // Once requests travel on the data channel the stream carries nothing, and the muxer ends it after its
      // inactivity timeout (2 minutes): that must not end a link that is busy on its channel. A malformed
      // frame on the stream still does; requests still waiting for an answer on the stream fail over.
      if (this.onDataChannel && !this.closed && !(err instanceof WireDecodeError)) {
        this.lp = undefined
        for (const [reqId, pending] of this.pending) {
          if (pending.onChannel) continue
          this.pending.delete(reqId)
          pending.reject(new PeerLinkClosedError(`stream to ${this.peerId} ended: ${(err as Error).message}`, { cause: err }))
        }
        return
      }
      this.close(err as Error)
    }
  }

  /** True while requests travel on the libp2p stream (false once it ended beside a data channel). */
  get onStream (): boolean {
    return this.lp !== undefined
  }

  /** True once requests travel on a data channel. */
  get onDataChannel (): boolean {
    return this.channel !== undefined && !this.channel.closed
  }

  /**
   * Moves requests to a data channel: asks for one on the stream, connects to the address this peer's libp2p
   * connection reached. Any failure leaves the link on its stream (the peer may not offer one).
   */
  private async upgrade (): Promise<void> {
    // A timeout or refused connect on a loaded host is worth another try (the link may live for hours); a
    // peer that offers none (Unsupported) or has no IP address is not asked again on this link.
    for (let attempt = 0; attempt < CHANNEL_MAX_ATTEMPTS && !this.closed; attempt++) {
      if (attempt > 0) {
        try {
          await this.clock.sleep(CHANNEL_RETRY_BASE_MS * 2 ** (attempt - 1), this.controller.signal)
        } catch {
          return
        }
      }
      if (await this.tryUpgrade()) return
    }
  }

  /** One attempt; true when done (a channel is up, or none will be had). */
  private async tryUpgrade (): Promise<boolean> {
    try {
      const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(CHANNEL_SETUP_TIMEOUT_MS)])
      const offer = await this.send<DataChannelOffer>('channel', reqId => encodeClientFrame({ type: FrameType.Channel, reqId }), signal)
      const host = this.node.getConnections(this.remote).flatMap(c => c.remoteAddr.getComponents())
        .find(c => (c.name === 'ip4' || c.name === 'ip6') && c.value !== undefined)?.value
      if (host === undefined) return true
      const { socket, receive } = await connectDataChannel(host, offer, signal)
      if (this.closed) { socket.destroy(); return true }
      this.channel = new SealedChannel({
        socket,
        receiveFrom: receive,
        sendKey: offer.clientKey,
        receiveKey: offer.serverKey,
        maxReceiveFrameBytes: MAX_RESPONSE_FRAME_BYTES,
        onFrame: data => {
          try {
            const now = this.clock.nowMs()
            this.lastHeardAtMs = now
            this.channelFrames++
            this.onFrame(decodeServerFrame(data, MAX_BLOCK_SIZE_BYTES), data.byteLength, now)
          } catch (err) {
            this.close(err as Error)
          }
        },
        // Requests in flight on it are lost with it: the link ends and its users ask again.
        onClose: err => { this.close(err ?? new PeerLinkClosedError('data channel ended')) }
      })
      return true
    } catch (err) {
      if (this.closed) return true
      const unsupported = err instanceof BlocksUnavailableError
      this.logger.info('no data channel; blocks stay on the stream', { peer: this.peerId, error: (err as Error).message, retry: !unsupported })
      return unsupported
    }
  }

  private onFrame (frame: ServerFrame, frameBytes: number, nowMs: number): void {
    const pending = this.pending.get(frame.reqId)
    if (frame.type === FrameType.Blocks) {
      // Throughput: bytes over the time since the previous frame, when the link was busy all along.
      const since = Math.max(this.lastFrameAtMs, pending?.sentAtMs ?? nowMs)
      this.lastFrameAtMs = nowMs
      if (frameBytes >= 64 * 1024 && nowMs > since) {
        const sample = frameBytes * 1000 / Math.max(0.05, nowMs - since)
        this.throughputBytesPerS = this.throughputBytesPerS === undefined ? sample : this.throughputBytesPerS * (1 - EWMA_ALPHA) + sample * EWMA_ALPHA
      }
    }
    if (pending === undefined) return // cancelled: late frames are dropped
    switch (frame.type) {
      case FrameType.Blocks: {
        if (pending.kind !== 'get') throw new WireDecodeError('BLOCKS frame for a request that is not a GET')
        for (const entry of frame.entries) {
          const data = entry.status === BlockStatus.Data ? (entry.data as Uint8Array) : null
          if (pending.received?.has(entry.index) === true) throw new WireDecodeError(`block ${entry.index} sent twice`)
          pending.received?.set(entry.index, data)
          pending.onBlock?.(entry.index, data)
        }
        if (frame.final) {
          this.pending.delete(frame.reqId)
          if (pending.received?.size !== pending.expected) throw new WireDecodeError('final BLOCKS frame before every block was answered')
          pending.resolve(pending.received)
        }
        return
      }
      case FrameType.ChannelOffer: {
        if (pending.kind !== 'channel') throw new WireDecodeError('CHANNEL_OFFER for a request that is not a CHANNEL')
        this.pending.delete(frame.reqId)
        pending.resolve(frame)
        return
      }
      case FrameType.Admitted:
      case FrameType.Pong: {
        this.pending.delete(frame.reqId)
        this.observeRtt(nowMs - pending.sentAtMs)
        pending.resolve(frame.type === FrameType.Admitted ? { accepted: frame.accepted, childCount: frame.childCount, childLimit: frame.childLimit } : undefined)
        return
      }
      case FrameType.Error: {
        this.pending.delete(frame.reqId)
        pending.reject(frame.code === ErrorCode.Busy
          ? new PeerBusyError(`${this.peerId} is busy`)
          : frame.code === ErrorCode.UnknownImage
            ? new BlocksUnavailableError(`${this.peerId} does not have the image`)
            : frame.code === ErrorCode.Unsupported
              ? new BlocksUnavailableError(`${this.peerId} offers no data channel`)
              : new WireDecodeError(`${this.peerId} refused the request as malformed`))
      }
    }
  }

  private observeRtt (sampleMs: number): void {
    this.rttSampledAtMs = this.clock.nowMs()
    this.rttMs = this.rttMs === undefined ? sampleMs : this.rttMs * (1 - EWMA_ALPHA) + sampleMs * EWMA_ALPHA
  }

  private async send<T> (kind: Pending['kind'], build: (reqId: number) => Uint8Array, signal: AbortSignal,
    extra: Partial<Pending> = {}, cancellable = false): Promise<T> {
    await this.open()
    signal.throwIfAborted()
    const reqId = this.nextReqId
    this.nextReqId = this.nextReqId >= 0xffffffff ? 1 : this.nextReqId + 1
    const { promise, resolve, reject } = Promise.withResolvers<T>()
    // A CHANNEL request goes on the stream: the channel is what it asks for. So does admission (and its lease
    // renewal) while the stream lives: on the channel it queued behind the blocks the parent was sending its
    // children, up to the socket's whole send buffer (at 100 Mb/s an agent attaching under a busy relay got its
    // answer 1.0-1.7 s after create). Pings stay on the channel: their RTT includes the relay's queue, which
    // parent selection should see.
    const onChannel = kind !== 'channel' && !(kind === 'admit' && this.lp !== undefined) && this.onDataChannel
    const pending: Pending = { kind, onChannel, sentAtMs: this.clock.nowMs(), resolve, reject, ...extra }
    this.pending.set(reqId, pending)
    const onAbort = (): void => {
      if (!this.pending.has(reqId)) return
      this.pending.delete(reqId)
      if (cancellable) this.write(encodeClientFrame({ type: FrameType.Cancel, reqId }), onChannel)
      reject(signal.reason)
    }
    signal.addEventListener('abort', onAbort, { once: true })
    this.write(build(reqId), onChannel)
    try {
      return await promise
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  private write (frame: Uint8Array, onChannel: boolean): void {
    if (onChannel) {
      this.channel?.write(frame, this.controller.signal).catch(err => { this.close(err as Error) })
      return
    }
    const lp = this.lp
    if (lp === undefined) return
    lp.write(frame, { signal: this.controller.signal }).catch(err => { this.close(err as Error) })
  }

  /**
   * Asks for blocks of the image with this root; resolves with every index mapped to its data or null (not
   * present). `onBlock` sees each block as its frame arrives. Data are not verified here.
   */
  async getBlocks (root: Uint8Array, indexes: readonly number[], priority: Priority,
    options: { signal: AbortSignal, onBlock?: BlockCallback }): Promise<Map<number, Uint8Array | null>> {
    return await this.send('get', reqId => encodeClientFrame({ type: FrameType.Get, reqId, priority, root, indexes: [...indexes] }),
      options.signal, { onBlock: options.onBlock, received: new Map(), expected: indexes.length }, true)
  }

  /**
   * Joins (or renews) this agent as a child of the peer for an image, or leaves. `asked`: the parents we stripe
   * over and whether we attach from nothing (detached, no child: only then may the peer refuse us as a sole
   * child, topology/admit.ts). Measures RTT.
   */
  async admit (root: Uint8Array, leave: boolean, signal: AbortSignal, asked?: { parentCount: number, attaching: boolean }): Promise<AdmitReply> {
    const extra = asked === undefined ? {} : { parentCount: Math.min(255, Math.max(1, Math.floor(asked.parentCount))), attaching: asked.attaching }
    return await this.send('admit', reqId => encodeClientFrame({ type: FrameType.Admit, reqId, root, leave, ...extra }), signal)
  }

  /** A round trip on the open stream; returns the measured ms. */
  async ping (signal: AbortSignal): Promise<number> {
    const start = this.clock.nowMs()
    await this.send('ping', reqId => encodeClientFrame({ type: FrameType.Ping, reqId }), signal)
    return this.clock.nowMs() - start
  }

  close (err?: Error): void {
    if (this.closed) return
    this.closed = true
    // The cause tells the peer source why: a malformed frame from the peer (WireDecodeError) gets it banned.
    const reason = new PeerLinkClosedError(`link to ${this.peerId} closed${err !== undefined ? `: ${err.message}` : ''}`, { cause: err })
    for (const [, pending] of this.pending) pending.reject(reason)
    this.pending.clear()
    this.controller.abort(reason)
    this.channel?.destroy()
    if (this.stream !== undefined) {
      if (err !== undefined) this.stream.abort(err)
      else void this.stream.close().catch(() => {})
    }
    if (err !== undefined && err.name !== 'AbortError') this.logger.warn('peer link closed', { peer: this.peerId, error: err.message })
  }
}
