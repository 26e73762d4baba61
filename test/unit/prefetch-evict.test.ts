import { test } from 'node:test'
import assert from 'node:assert/strict'
import { chooseEvictions, type EvictionImage } from '../../src/prefetch/index.js'

const BS = 65536
const image = (imageId: string, n: number, lastUseBase: number, openInstances = 0): EvictionImage => ({
  imageId, blockSizeBytes: BS, openInstances, blocks: Array.from({ length: n }, (_, i) => ({ block: i, lastUseMs: lastUseBase + i }))
})

test('evicts images with no instance, least recently used first, and never a block of an open image', { timeout: 5_000 }, () => {
  const images = [image('old', 10, 1000), image('open', 10, 0, 1), image('recent', 10, 5000)]
  // 30 blocks used, quota 15: 15 to go; 'old' (last use 1009) goes whole, then 5 LRU blocks of 'recent'.
  const plan = chooseEvictions({ images, quotaBytes: 15 * BS })
  assert.deepEqual(plan.evict, [{ imageId: 'old', blocks: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }, { imageId: 'recent', blocks: [0, 1, 2, 3, 4] }])
  assert.equal(plan.usedBytes, 30 * BS)
  assert.equal(plan.freedBytes, 15 * BS)
  assert.equal(plan.pinnedBytes, 10 * BS)
  assert.equal(plan.shortBytes, 0)
  // Under quota: nothing.
  assert.deepEqual(chooseEvictions({ images, quotaBytes: 30 * BS }).evict, [])
  // Pinned alone over quota: evict every unpinned block, report the shortfall, keep the pinned ones.
  const tight = chooseEvictions({ images, quotaBytes: 4 * BS })
  assert.ok(tight.evict.every(e => e.imageId !== 'open'))
  assert.equal(tight.freedBytes, 20 * BS)
  assert.equal(tight.shortBytes, 6 * BS)
})

test('eviction never drops pinned blocks, over random caches', { timeout: 10_000 }, () => {
  let seed = 99
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  for (let round = 0; round < 300; round++) {
    const images: EvictionImage[] = Array.from({ length: 1 + rand(6) }, (_, k) => ({
      imageId: `img${k}`,
      blockSizeBytes: 4096 << rand(5),
      openInstances: rand(3) === 0 ? 1 + rand(3) : 0,
      blocks: Array.from({ length: rand(50) }, (_, i) => ({ block: i * 3 + rand(3), lastUseMs: rand(10_000) }))
    }))
    const used = images.reduce((s, im) => s + im.blocks.length * im.blockSizeBytes, 0)
    const pinned = images.filter(im => im.openInstances > 0).reduce((s, im) => s + im.blocks.length * im.blockSizeBytes, 0)
    const quotaBytes = rand(used + 1)
    const plan = chooseEvictions({ images, quotaBytes })
    const byId = new Map(images.map(im => [im.imageId, im]))
    let freed = 0
    for (const e of plan.evict) {
      const im = byId.get(e.imageId)!
      assert.equal(im.openInstances, 0, 'a block of an image with an open instance was evicted')
      const present = new Set(im.blocks.map(b => b.block))
      assert.ok(e.blocks.every(b => present.has(b)))
      assert.equal(new Set(e.blocks).size, e.blocks.length)
      freed += e.blocks.length * im.blockSizeBytes
    }
    assert.equal(freed, plan.freedBytes)
    assert.equal(plan.pinnedBytes, pinned)
    // Meets the quota whenever the unpinned blocks suffice, and then frees less than one block too many per image.
    if (pinned <= quotaBytes) assert.ok(used - freed <= quotaBytes, `round ${round}`)
    else assert.equal(plan.shortBytes, used - freed - quotaBytes)
  }
})
