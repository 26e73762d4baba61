// Server side of /vmthunder/blocks/1 (frames in wire.ts): serves present blocks of the images this agent
// holds, answers child admission and pings.
//
// Per stream, requests wait in two FIFO queues, demand before prefetch, and are answered a frame at a time
// (at most frameBudgetBytes of block data per frame; prefetch frames at most prefetchFrameBudgetBytes), so a
// demand request that arrives behind prefetch waits for at most one small frame. Only blocks for which the store's has() is true are served (verified and
// durable); anything else is answered 'not present'. Bounds per stream: queued requests and queued bytes
// (beyond them the request gets ERROR busy); the upload token bucket is charged before every frame.

import '../polyfill.js'
import { setMaxListeners } from 'node:events'
import { lpStream } from '@libp2p/utils'
import type { Socket } from 'node:net'
import type { Connection, Stream } from '@libp2p/interface'
import type { Uint8ArrayList } from 'uint8arraylist'
import { blockLength } from '../blockstack/manifest.js'
import type { BlockStore } from '../blockstack/types.js'
import type { Logger } from '../blockstack/cache.js'
import {
  BlockStatus, ErrorCode, FrameType, MAX_REQUEST_FRAME_BYTES, decodeClientFrame, encodeBlocksFrame, encodeServerFrame,
  type BlockEntry, type ClientFrame
} from './wire.js'
import type { TokenBucket } from './rate-limit.js'
import type { LastResortBudget } from './last-resort-budget.js'
import { SealedChannel } from './sealed-channel.js'
import type { ChannelKeys, DataChannelOffer } from './data-channel.js'

export const DEFAULT_FRAME_BUDGET_BYTES = 1024 * 1024
/** Prefetch frames are small: a demand request that arrives meanwhile waits for at most this (1 ms at 1 Gb/s). */
export const DEFAULT_PREFETCH_FRAME_BUDGET_BYTES = 128 * 1024
export const DEFAULT_MAX_QUEUED_REQUESTS = 64
export const DEFAULT_MAX_QUEUED_BYTES = 32 * 1024 * 1024
/**
 * What the origin sends to peers that are not its children, in all (nonChildBudget): a burst of 4 MiB (the first reads
 * of a few agents still attaching) and 4 MiB/s after it, 3 % of a 1 Gb/s uplink.
 */
export const DEFAULT_NON_CHILD_BURST_BYTES = 4 * 1024 * 1024
export const DEFAULT_NON_CHILD_BYTES_PER_SEC = 4 * 1024 * 1024

export interface AdmitReply {
  accepted: boolean
  childCount: number
  childLimit: number
}

export interface BlockServerInit {
  /** The store of the image with this manifest root, if this agent has it. */
  resolve: (rootHex: string) => BlockStore | undefined
  /** Child admission for an image (undefined: unknown image). */
  admit: (peerId: string, rootHex: string, leave: boolean, asked?: { parentCount: number, attaching: boolean }) => AdmitReply | undefined
  uploadBucket: TokenBucket
  onSent?: (rootHex: string, peerId: string, bytes: number) => void
  /** A request was answered (used to count who is downloading from us). */
  onRequest?: (rootHex: string, peerId: string) => void
  isBanned?: (peerId: string) => boolean
  /**
   * Relay: makes missing blocks present (fetching them from this agent's own parents) for a requester that
   * may ask it (a child). Resolves when they are present or cannot be had; absent: no relaying.
   */
  relay?: (rootHex: string, peerId: string, blockIndexes: number[], priority: 0 | 1, signal: AbortSignal,
    onProgress?: () => void) => Promise<void> | undefined
  logger: Logger
  frameBudgetBytes?: number
  prefetchFrameBudgetBytes?: number
  maxQueuedRequests?: number
  maxQueuedBytes?: number
  /**
   * Test-only seam (test/helpers/fault-layers.ts wraps it to send truncated frames): how BLOCKS frames are
   * encoded. Default encodeBlocksFrame; not in the config schema, and the daemon never sets it.
   */
  frameEncoder?: typeof encodeBlocksFrame
  /** Data channels this agent offers (CHANNEL on the stream); absent: none, blocks stay on the stream. */
  dataChannels?: { offer: (peerId: string) => DataChannelOffer | undefined }
  /**
   * The origin's upload is for its children (the tree): what it sends to other peers (agents still without a
   * parent, asking it as a last resort) is taken from this budget, for all of them together, and a request
   * beyond it gets ERROR busy. Each agent bounds what it asks that way (last-resort-budget.ts), but at scale the
   * sum was the problem: in the simulator 10,000 agents booting at once had the origin send 0.67 GB to agents
   * still attaching, and 100,000 queued 6.35 GB at it in the first second. Only the origin's images: another
   * seed that busied such readers sent them to the origin (a cluster test's origin sent 1.6x the image).
   * Absent: no bound.
   */
  nonChildBudget?: LastResortBudget
  /** Whether a request is charged to nonChildBudget: an image this agent originates, a peer not its child. */
  chargesNonChildBudget?: (rootHex: string, peerId: string) => boolean
}

interface ServeJob {
  reqId: number
  rootHex: string
  store: BlockStore
  indexes: number[]
  next: number
  bytesLeft: number
  cancelled: boolean
  prefetch: boolean
  /** Missing blocks of this job are being fetched upstream: serve only up to the first missing one. */
  relaying: boolean
}

/** Where a frame server writes its frames: a length-prefixed libp2p stream or a sealed data channel. */
export interface FrameSink {
  write: (frame: Uint8Array | Uint8ArrayList, options: { signal: AbortSignal }) => Promise<void>
}

interface FrameServer {
  /** Handles one request frame (throws WireDecodeError on a malformed one). */
  onFrame: (data: Uint8Array | Uint8ArrayList) => void
  /** Ends the server: queued jobs stop, the reason (if any) is in `controller.signal.reason`. */
  controller: AbortController
  signal: AbortSignal
}

/** The request handling shared by both carriers. `onStream`: CHANNEL may be asked (only on the libp2p stream). */
function createFrameServer (init: BlockServerInit, peerId: string, sink: FrameSink, stopSignal: AbortSignal, onStream: boolean): FrameServer {
  const frameBudget = init.frameBudgetBytes ?? DEFAULT_FRAME_BUDGET_BYTES
  const prefetchFrameBudget = Math.min(frameBudget, init.prefetchFrameBudgetBytes ?? DEFAULT_PREFETCH_FRAME_BUDGET_BYTES)
  const maxQueued = init.maxQueuedRequests ?? DEFAULT_MAX_QUEUED_REQUESTS
  const maxQueuedBytes = init.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES
  const encodeFrame = init.frameEncoder ?? encodeBlocksFrame
  const demand: ServeJob[] = []
  const prefetch: ServeJob[] = []
  const byId = new Map<number, ServeJob>()
  let queuedBytes = 0
  let pumping = false
  const controller = new AbortController()
  const signal = AbortSignal.any([controller.signal, stopSignal])
  setMaxListeners(Infinity, signal)

  /** The origin serves peers other than its children within the shared budget (see nonChildBudget). */
  const nonChildMayHave = (rootHex: string, bytes: number): boolean => {
    const budget = init.nonChildBudget
    if (budget === undefined || bytes === 0 || init.chargesNonChildBudget?.(rootHex, peerId) !== true) return true
    return budget.tryTake(bytes)
  }
  const writeSmall = (bytes: Uint8Array): void => {
    sink.write(bytes, { signal }).catch(err => { controller.abort(err) })
  }

  const ready = (job: ServeJob): boolean => !job.cancelled && (!job.relaying || job.store.has(job.indexes[job.next]))
  const nextJob = (): ServeJob | undefined => {
    while (demand.length > 0 && demand[0].cancelled) demand.shift()
    while (prefetch.length > 0 && prefetch[0].cancelled) prefetch.shift()
    return demand.find(ready) ?? prefetch.find(ready)
  }

  const dequeue = (job: ServeJob): void => {
    for (const queue of [demand, prefetch]) {
      const at = queue.indexOf(job)
      if (at >= 0) queue.splice(at, 1)
    }
  }

  const pump = async (): Promise<void> => {
    if (pumping) return
    pumping = true
    try {
      while (!signal.aborted) {
        // Wait for upload tokens before choosing the next frame, so that a demand request arriving during the
        // wait goes ahead of prefetch frames (choosing first let one prefetch frame overtake it).
        await init.uploadBucket.take(0, signal)
        const job = nextJob()
        if (job === undefined) break
        // One frame of this job: at least one block, then up to the byte budget.
        const take: number[] = []
        let bytes = 0
        const budget = job.prefetch ? prefetchFrameBudget : frameBudget
        while (job.next < job.indexes.length) {
          const index = job.indexes[job.next]
          const length = index < job.store.manifest.blockCount ? blockLength(job.store.manifest, index) : 0
          if (take.length > 0 && bytes + length > budget) break
          if (take.length > 0 && job.relaying && !job.store.has(index)) break
          take.push(index)
          bytes += length
          job.next++
        }
        const entries: BlockEntry[] = await Promise.all(take.map(async index => {
          if (index >= job.store.manifest.blockCount || !job.store.has(index)) return { index, status: BlockStatus.NotPresent }
          try {
            return { index, status: BlockStatus.Data, data: await job.store.readBlock(index, { signal }) }
          } catch {
            return { index, status: BlockStatus.NotPresent }
          }
        }))
        const final = job.next >= job.indexes.length
        let sentBytes = 0
        for (const entry of entries) sentBytes += entry.data?.byteLength ?? 0
        if (job.cancelled) {
          // Its bytes were released by CANCEL; drop it from the queue once nothing of it is left to read.
          if (final) dequeue(job)
          continue
        }
        queuedBytes -= bytes
        job.bytesLeft -= bytes
        if (final) {
          dequeue(job)
          byId.delete(job.reqId)
        }
        await init.uploadBucket.take(sentBytes, signal)
        await sink.write(encodeFrame(job.reqId, final, entries), { signal })
        if (sentBytes > 0) init.onSent?.(job.rootHex, peerId, sentBytes)
      }
    } catch (err) {
      controller.abort(err)
    } finally {
      pumping = false
    }
  }

  const onFrame = (frame: ClientFrame): void => {
    switch (frame.type) {
      case FrameType.Ping:
        writeSmall(encodeServerFrame({ type: FrameType.Pong, reqId: frame.reqId }))
        return
      case FrameType.Channel: {
        const offer = onStream && init.isBanned?.(peerId) !== true ? init.dataChannels?.offer(peerId) : undefined
        writeSmall(offer === undefined
          ? encodeServerFrame({ type: FrameType.Error, reqId: frame.reqId, code: ErrorCode.Unsupported })
          : encodeServerFrame({ type: FrameType.ChannelOffer, reqId: frame.reqId, ...offer }))
        return
      }
      case FrameType.Admit: {
        const rootHex = Buffer.from(frame.root).toString('hex')
        const reply = init.isBanned?.(peerId) === true
          ? { accepted: false, childCount: 0, childLimit: 0 }
          : init.admit(peerId, rootHex, frame.leave, frame.parentCount === undefined ? undefined : { parentCount: frame.parentCount, attaching: frame.attaching === true })
        writeSmall(reply === undefined
          ? encodeServerFrame({ type: FrameType.Error, reqId: frame.reqId, code: ErrorCode.UnknownImage })
          : encodeServerFrame({ type: FrameType.Admitted, reqId: frame.reqId, ...reply }))
        return
      }
      case FrameType.Cancel: {
        const job = byId.get(frame.reqId)
        if (job !== undefined) {
          job.cancelled = true
          byId.delete(job.reqId)
          queuedBytes -= job.bytesLeft
          job.bytesLeft = 0
        }
        return
      }
      case FrameType.Get: {
        const rootHex = Buffer.from(frame.root).toString('hex')
        const store = init.isBanned?.(peerId) === true ? undefined : init.resolve(rootHex)
        if (store === undefined) {
          writeSmall(encodeServerFrame({ type: FrameType.Error, reqId: frame.reqId, code: ErrorCode.UnknownImage }))
          return
        }
        let bytesLeft = 0
        for (const index of frame.indexes) bytesLeft += index < store.manifest.blockCount ? blockLength(store.manifest, index) : 0
        if (byId.has(frame.reqId)) {
          writeSmall(encodeServerFrame({ type: FrameType.Error, reqId: frame.reqId, code: ErrorCode.BadRequest }))
          return
        }
        if (byId.size >= maxQueued || queuedBytes + bytesLeft > maxQueuedBytes || !nonChildMayHave(rootHex, bytesLeft)) {
          writeSmall(encodeServerFrame({ type: FrameType.Error, reqId: frame.reqId, code: ErrorCode.Busy }))
          return
        }
        const job: ServeJob = { reqId: frame.reqId, rootHex, store, indexes: frame.indexes, next: 0, bytesLeft, cancelled: false, prefetch: frame.priority !== 0, relaying: false }
        byId.set(job.reqId, job)
        queuedBytes += bytesLeft
        init.onRequest?.(rootHex, peerId)
        const missing = frame.indexes.filter(index => index < store.manifest.blockCount && !store.has(index))
        if (missing.length > 0 && init.relay !== undefined) {
          // Each relayed block is sent as soon as it is in (cut-through), in the request's order.
          const relaying = init.relay(rootHex, peerId, missing, frame.priority, signal, () => { void pump() })
          if (relaying !== undefined) {
            job.relaying = true
            relaying.catch(() => {}).finally(() => { job.relaying = false; void pump() })
          }
        }
        ;(frame.priority === 0 ? demand : prefetch).push(job)
        void pump()
      }
    }
  }

  return { onFrame: data => { onFrame(decodeClientFrame(data)) }, controller, signal }
}

/** Handles one inbound block stream until it ends. */
export async function serveBlockStream (init: BlockServerInit, stream: Stream, connection: Connection, stopSignal: AbortSignal): Promise<void> {
  const peerId = connection.remotePeer.toString()
  const lp = lpStream(stream, { maxDataLength: MAX_REQUEST_FRAME_BYTES })
  const { onFrame, controller, signal } = createFrameServer(init, peerId, lp, stopSignal, true)
  try {
    while (!signal.aborted) {
      let data
      try {
        data = await lp.read({ signal })
      } catch (err) {
        if (signal.aborted || (err as Error).name === 'UnexpectedEOFError') break
        throw err
      }
      onFrame(data)
    }
    if (controller.signal.aborted) throw controller.signal.reason
    await stream.close().catch(() => {})
  } catch (err) {
    init.logger.warn('block stream closed on error', { peer: peerId, error: (err as Error).message })
    stream.abort(err as Error)
  } finally {
    controller.abort()
  }
}

/** Serves block frames on an authenticated data channel socket (data-channel.ts) for `peerId` until it closes. */
export function serveDataChannel (init: BlockServerInit, peerId: string, socket: Socket, keys: ChannelKeys, stopSignal: AbortSignal): SealedChannel {
  // The sink is the channel, built right after: frames only arrive once both exist.
  let channel: SealedChannel | undefined
  const sink: FrameSink = { write: async (frame, options) => { await channel!.write(frame, options.signal) } }
  const server = createFrameServer(init, peerId, sink, stopSignal, false)
  channel = new SealedChannel({
    socket,
    sendKey: keys.sendKey,
    receiveKey: keys.receiveKey,
    maxReceiveFrameBytes: MAX_REQUEST_FRAME_BYTES,
    onFrame: data => { server.onFrame(data) },
    onClose: err => {
      if (err !== undefined && err.name !== 'AbortError') init.logger.warn('data channel closed on error', { peer: peerId, error: err.message })
      server.controller.abort(err)
    }
  })
  // A server error (a write that failed) or the service stopping ends the channel too.
  server.signal.addEventListener('abort', () => { channel?.destroy(server.controller.signal.aborted ? server.controller.signal.reason as Error : undefined) }, { once: true })
  return channel
}
