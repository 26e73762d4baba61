// The interfaces the block data path is built from. blockstack knows nothing of libp2p: the p2p layer
// implements BlockSource (blocks from peers) and reads the cache through BlockStore; the NBD server reads
// exports through ExportProvider.

import type { Manifest } from './manifest.js'

/** A block as a source delivered it: not yet verified. `peer` names where it came from, for blame. */
export interface FetchedBlock {
  index: number
  data: Uint8Array
  /** Who sent it (a peer id, 'file', ...): reported back through BlockSource.reportCorrupt on a bad hash. */
  peer?: string
}

export type FetchPriority = 'demand' | 'prefetch'

export interface FetchOptions {
  signal: AbortSignal
  /** On-demand reads (a VM waits) always go before prefetch. Default 'demand'. */
  priority?: FetchPriority
  /**
   * A source may hand over each block as soon as it arrives (cut-through), before fetch resolves; it still
   * returns every block from fetch (the cache ignores the ones it already took).
   */
  onBlock?: (block: FetchedBlock) => void
}

/**
 * Where missing blocks come from. The origin's source is its own image file; other agents' source is their
 * parents. A source returns every requested block or throws; the cache verifies each block against the
 * manifest before it is stored, and tells the source about a bad one so that it can drop and ban the sender.
 */
export interface BlockSource {
  fetch: (manifest: Manifest, blockIndexes: readonly number[], options: FetchOptions) => Promise<FetchedBlock[]>
  reportCorrupt?: (manifest: Manifest, blockIndex: number, peer: string | undefined) => void
}

/** What the peer layer needs from a host's cache of one image: serve present blocks, learn of new ones. */
export interface BlockStore {
  readonly manifest: Manifest
  /** True when the block is present and verified (only such blocks may be served). */
  has: (blockIndex: number) => boolean
  /** Reads a present block; throws BlockNotPresentError otherwise. Never returns unverified bytes. */
  readBlock: (blockIndex: number, options?: { signal?: AbortSignal }) => Promise<Uint8Array>
  /** Count of present blocks (zero blocks of the manifest count as present). */
  presentCount: () => number
  /** A copy of the presence bitmap, one bit per block, LSB first. */
  presentBitmap: () => Uint8Array
}

/** One export as the NBD server sees it. */
export interface NbdExport {
  readonly name: string
  readonly description?: string
  readonly sizeBytes: number
  /** Resolves with exactly `length` bytes at `offset`; 0 <= offset, offset + length <= sizeBytes. */
  read: (offset: number, length: number, signal: AbortSignal) => Promise<Uint8Array>
}

export interface ExportProvider {
  list: () => string[]
  get: (name: string) => NbdExport | undefined
}
