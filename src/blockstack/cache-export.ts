// An image's cache as an NBD export: reads through the block cache into pooled buffers that the NBD server
// hands back once the reply is written (a fresh large Buffer per read costs page faults and GC).

import type { BlockCache } from './cache.js'
import type { NbdExport } from './types.js'
import { BufferPool, type BufferReleasingExport } from './nbd/buffer-pool.js'

export function cacheExport (name: string, cache: BlockCache, pool: BufferPool): NbdExport & BufferReleasingExport {
  const allocate = (length: number): Buffer => pool.acquire(length)
  return {
    name,
    description: `vmthunder image ${name} (root ${cache.manifest.rootHex.slice(0, 16)})`,
    sizeBytes: cache.manifest.sizeBytes,
    read: async (offset, length, signal) => await cache.read(offset, length, signal, { allocate }),
    releaseBuffer: data => { pool.release(data) }
  }
}
