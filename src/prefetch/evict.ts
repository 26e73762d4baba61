// Chooses blocks to evict to bring the cache under its quota. Pure.
//
// Pinning: every block of an image with an open instance is pinned, not only the blocks in its profile. A
// running VM reads its base image through its copy-on-write snapshot at any time (a package install, a log
// rotation, a file first opened a week later), and a profile covers only the boot; evicting under it would
// turn a local read into a network fetch that may fail if the parents are gone. So an image is evictable
// only when no instance uses it. Order: least recently used image first (image last use = its newest block
// use), and inside an image its least recently used blocks first, so the images left stay whole (seeds).
// If pinned blocks alone exceed the quota, the plan says how far over it stays (shortBytes) and evicts
// nothing pinned.

export interface EvictionImage {
  imageId: string
  blockSizeBytes: number
  /** Present, stored blocks (zero blocks take no disk: leave them out) and when each was last read. */
  blocks: ReadonlyArray<{ block: number, lastUseMs: number }>
  openInstances: number
}

export interface EvictionInput {
  images: readonly EvictionImage[]
  quotaBytes: number
}

export interface EvictionPlan {
  evict: Array<{ imageId: string, blocks: number[] }>
  usedBytes: number
  freedBytes: number
  pinnedBytes: number
  /** Bytes still over quota after the plan (only when pinned blocks alone exceed it). */
  shortBytes: number
}

export function chooseEvictions (input: EvictionInput): EvictionPlan {
  let usedBytes = 0
  let pinnedBytes = 0
  const candidates: Array<{ image: EvictionImage, lastUseMs: number }> = []
  for (const image of input.images) {
    const bytes = image.blocks.length * image.blockSizeBytes
    usedBytes += bytes
    if (image.openInstances > 0) {
      pinnedBytes += bytes
      continue
    }
    let lastUseMs = -Infinity
    for (const b of image.blocks) lastUseMs = Math.max(lastUseMs, b.lastUseMs)
    candidates.push({ image, lastUseMs })
  }
  candidates.sort((x, y) => x.lastUseMs - y.lastUseMs || (x.image.imageId < y.image.imageId ? -1 : 1))
  let over = usedBytes - Math.max(0, input.quotaBytes)
  let freedBytes = 0
  const evict: EvictionPlan['evict'] = []
  for (const { image } of candidates) {
    if (over <= 0) break
    const n = Math.min(image.blocks.length, Math.ceil(over / image.blockSizeBytes))
    const blocks = [...image.blocks]
      .sort((x, y) => x.lastUseMs - y.lastUseMs || y.block - x.block)
      .slice(0, n)
      .map(b => b.block)
    evict.push({ imageId: image.imageId, blocks })
    const bytes = n * image.blockSizeBytes
    freedBytes += bytes
    over -= bytes
  }
  return { evict, usedBytes, freedBytes, pinnedBytes, shortBytes: Math.max(0, over) }
}
