// Fault layers for hostile-peer tests (test-only: nothing under src/ imports this, and no config key reaches
// it). Like nbdkit's filters each layer holds `next` and changes one thing on the way through; like js-libp2p's
// services each is built as `layer(init)(next)`, so a test composes them instead of monkey-patching objects:
//
//   service.addImage(blockFaultLayer({ fault: 'flip' })(cache))                 a liar over a real cache
//   createP2PService({ ..., frameEncoder: truncatedFrameLayer({})(encodeBlocksFrame) })  malformed frames
//
// blockFaultLayer wraps the store an agent serves to peers (src/p2p/block-server.ts calls has() and
// readBlock()); truncatedFrameLayer wraps the BLOCKS frame encoder (the block server's test-only seam).
// Each layer counts what it did, so a test can assert that the fault really happened: a "hostile" peer
// that never got asked proves nothing.

import { Uint8ArrayList } from 'uint8arraylist'
import type { ServedStore } from '../../src/p2p/service.js'
import type { BlockEntry } from '../../src/p2p/wire.js'

/** flip: one byte of the block xor 0xff; truncate: a shorter block; stall: no answer until aborted or stallMs. */
export type BlockFault = 'flip' | 'truncate' | 'stall'

/** A stall longer than this is a test bug (every wait is bounded): it answers honestly after it. */
export const MAX_STALL_MS = 120_000

export class FaultLayerConfigError extends Error {
  override name = 'FaultLayerConfigError'
}

/** Which blocks (or frames) a layer touches: every one, or a predicate of the index. */
export type BlockSelector = (blockIndex: number) => boolean

export const everyBlock: BlockSelector = () => true

/**
 * About `fraction` of the blocks, chosen by an injected (seeded) random. The choice is remembered per block,
 * so a block asked twice is treated the same way both times (a liar stays a liar about that block).
 */
export function fractionOfBlocks (fraction: number, random: () => number): BlockSelector {
  if (!(fraction >= 0 && fraction <= 1)) throw new FaultLayerConfigError(`fraction must be in [0, 1], not ${fraction}`)
  const chosen = new Map<number, boolean>()
  return index => {
    let pick = chosen.get(index)
    if (pick === undefined) { pick = random() < fraction; chosen.set(index, pick) }
    return pick
  }
}

export interface BlockFaultInit {
  fault: BlockFault
  select?: BlockSelector
  /** flip: offset of the byte flipped in each block (default 0). */
  flipOffsetBytes?: number
  /** truncate: length of the block served (default half of it). */
  truncateToBytes?: number
  /** stall: answer honestly after this long if not aborted first (default MAX_STALL_MS, the most allowed). */
  stallMs?: number
}

export interface FaultCounts {
  /** Blocks (or frames) served with the fault. */
  faulted: number
  /** Served untouched (not selected). */
  passed: number
  /** Indexes of the blocks served faulty (for frames: every block of a truncated frame). */
  blocks: Set<number>
}

export type FaultyStore = ServedStore & { readonly faults: FaultCounts }

/** The fault layer over a served store; everything but readBlock of a selected block goes to `next` as is. */
export const blockFaultLayer = (init: BlockFaultInit) => (next: ServedStore): FaultyStore => {
  const select = init.select ?? everyBlock
  const stallMs = init.stallMs ?? MAX_STALL_MS
  if (stallMs < 0 || stallMs > MAX_STALL_MS) throw new FaultLayerConfigError(`stallMs must be in [0, ${MAX_STALL_MS}], not ${stallMs}`)
  const faults: FaultCounts = { faulted: 0, passed: 0, blocks: new Set() }

  const readBlock = async (blockIndex: number, options?: { signal?: AbortSignal }): Promise<Uint8Array> => {
    if (!select(blockIndex)) {
      faults.passed++
      return await next.readBlock(blockIndex, options)
    }
    faults.faulted++
    faults.blocks.add(blockIndex)
    if (init.fault === 'stall') {
      await stall(stallMs, options?.signal)
      return await next.readBlock(blockIndex, options)
    }
    // A copy: the cache may hand out its own buffer, and the liar must not corrupt the agent's own cache.
    const data = Buffer.from(await next.readBlock(blockIndex, options))
    if (init.fault === 'flip') {
      data[(init.flipOffsetBytes ?? 0) % data.length] ^= 0xff
      return data
    }
    return data.subarray(0, Math.min(data.length - 1, init.truncateToBytes ?? data.length >> 1))
  }

  // Explicit delegation (not a prototype chain): the layer exposes exactly what a served store has.
  return {
    get manifest () { return next.manifest },
    has: blockIndex => next.has(blockIndex),
    readBlock,
    presentCount: () => next.presentCount(),
    presentBitmap: () => next.presentBitmap(),
    ...(next.onBlocksAdded !== undefined ? { onBlocksAdded: listener => next.onBlocksAdded!(listener) } : {}),
    ...(next.ensure !== undefined ? { ensure: async (indexes, options) => { await next.ensure!(indexes, options) } } : {}),
    faults
  }
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
async function stall (ms: number, signal: AbortSignal | undefined): Promise<void> {
  signal?.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(done, ms)
    function done (): void { signal?.removeEventListener('abort', onAbort); resolve() }
    function onAbort (): void { clearTimeout(timer); reject(signal?.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

export type BlocksFrameEncoder = (reqId: number, final: boolean, entries: readonly BlockEntry[]) => Uint8ArrayList

export interface TruncatedFrameInit {
  /** Frames whose first block index passes are cut short (default: every frame with data). */
  select?: BlockSelector
  /** Bytes cut from the end of the frame (default 1); the header still claims the full lengths. */
  cutBytes?: number
}

export type FaultyFrameEncoder = BlocksFrameEncoder & { readonly faults: FaultCounts }

/**
 * The fault layer over the BLOCKS frame encoder: selected frames lose their last bytes while the header keeps
 * the original block lengths, i.e. a truncated wire frame. The length prefix (lpStream) is written around it
 * by the server, so the receiver gets a well-delimited message whose content is short.
 */
export const truncatedFrameLayer = (init: TruncatedFrameInit = {}) => (next: BlocksFrameEncoder): FaultyFrameEncoder => {
  const select = init.select ?? everyBlock
  const cutBytes = init.cutBytes ?? 1
  if (!(cutBytes >= 1)) throw new FaultLayerConfigError(`cutBytes must be at least 1, not ${cutBytes}`)
  const faults: FaultCounts = { faulted: 0, passed: 0, blocks: new Set() }
  const encoder = (reqId: number, final: boolean, entries: readonly BlockEntry[]): Uint8ArrayList => {
    const frame = next(reqId, final, entries)
    const dataBytes = entries.reduce((sum, entry) => sum + (entry.data?.byteLength ?? 0), 0)
    if (dataBytes === 0 || !select(entries[0].index)) {
      faults.passed++
      return frame
    }
    faults.faulted++
    for (const entry of entries) if (entry.data !== undefined) faults.blocks.add(entry.index)
    return frame.sublist(0, frame.byteLength - Math.min(cutBytes, dataBytes))
  }
  return Object.assign(encoder, { faults })
}
