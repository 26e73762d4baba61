// Hostile peers, composed from the fault layers of test/helpers/fault-layers.ts (no monkey-patching): real
// libp2p agents in one process over TCP on loopback. One agent serves flipped bits, truncated blocks,
// truncated wire frames or stalls to a victim that also has an honest parent; the victim must read the exact
// image, ban a peer that sent bad data, route around a staller, and get every faulty block from elsewhere.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { blockLength } from '../../src/blockstack/manifest.js'
import { encodeBlocksFrame } from '../../src/p2p/wire.js'
import type { BlockCache } from '../../src/blockstack/cache.js'
import type { ServedStore } from '../../src/p2p/service.js'
import { mulberry32 } from '../../scripts/lib/trial-utils.js'
import { IMAGE_ID, cluster, join_, readAll, type Cluster } from '../helpers/p2p-cluster.js'
import { blockFaultLayer, fractionOfBlocks, truncatedFrameLayer, type FaultCounts, type FaultyFrameEncoder } from '../helpers/fault-layers.js'

const HOSTILE = 0
const HONEST = 1
const VICTIM = 2
const IMAGE_BYTES = 4 * 1024 * 1024
/** Bound on waiting for the victim to take both seeds as parents (admission runs on the 500 ms heartbeat). */
const ATTACH_TIMEOUT_MS = 15_000

interface VictimRun {
  c: Cluster
  victim: BlockCache
  hostileId: string
  /** Bytes the victim received from peers other than the hostile one. */
  fromOthersBytes: number
}

/**
 * Origin (admits no child, so it is only a last resort), a hostile and an honest agent that both read the
 * whole image first, then a victim that joins with both as parents and reads the whole image.
 * `arm` turns the hostile agent bad after it has the image (a store layer, or flipping a frame layer on).
 */
async function runVictim (options: { arm: (c: Cluster, hostileCache: BlockCache) => void, frameEncoder?: FaultyFrameEncoder },
  check: (run: VictimRun) => void): Promise<void> {
  const c = await cluster({
    agents: 3,
    sizeBytes: IMAGE_BYTES,
    originChildLimit: 0,
    agentInitFor: i => i === HOSTILE && options.frameEncoder !== undefined ? { frameEncoder: options.frameEncoder } : {}
  })
  try {
    const seeds = await Promise.all([HOSTILE, HONEST].map(async i => await join_(c, c.agents[i], i)))
    for (const sha of await Promise.all(seeds.map(async cache => await readAll(cache)))) assert.equal(sha, c.sha)
    options.arm(c, seeds[HOSTILE])
    const victim = await join_(c, c.agents[VICTIM], VICTIM)
    const victimService = c.agents[VICTIM].service
    const hostileId = c.agents[HOSTILE].service.peerId
    const honestId = c.agents[HONEST].service.peerId
    await victimService.waitFor(() => {
      const parents = victimService.status().images[IMAGE_ID]?.parents ?? []
      return parents.includes(hostileId) && parents.includes(honestId)
    }, AbortSignal.timeout(ATTACH_TIMEOUT_MS))
    assert.equal(await readAll(victim), c.sha, 'the victim read exactly the origin\'s image')
    const byPeer = victimService.status().images[IMAGE_ID].bytesReceivedByPeer
    const fromOthersBytes = Object.entries(byPeer).filter(([peer]) => peer !== hostileId).reduce((sum, [, bytes]) => sum + bytes, 0)
    check({ c, victim, hostileId, fromOthersBytes })
  } finally {
    await c.close()
  }
}

/** Serves the hostile agent's image through `layer` from now on (the same cache underneath). */
function serveThrough (c: Cluster, cache: BlockCache, layer: (next: ServedStore) => ServedStore): void {
  const service = c.agents[HOSTILE].service
  service.removeImage(IMAGE_ID)
  service.addImage(layer(cache))
}

/** The bad peer did serve faults, and every block it spoiled reached the victim from another peer. */
function assertRefetched (run: VictimRun, faults: FaultCounts): void {
  assert.ok(faults.faulted >= 1, 'the hostile peer was asked and served at least one fault')
  let spoiledBytes = 0
  for (const index of faults.blocks) spoiledBytes += blockLength(run.c.manifest, index)
  assert.ok(run.fromOthersBytes >= spoiledBytes,
    `${faults.blocks.size} spoiled blocks (${spoiledBytes} bytes) refetched elsewhere; got ${run.fromOthersBytes} bytes from others`)
}

function assertBanned (run: VictimRun): void {
  const status = run.c.agents[VICTIM].service.status()
  assert.ok(status.banned.includes(run.hostileId), 'the hostile peer is banned')
  assert.ok(!status.images[IMAGE_ID].parents.includes(run.hostileId), 'and no longer a parent')
}

test('hostile: a peer that flips bits in half of its blocks is banned; no corrupt byte reaches the reader', { timeout: 120_000 }, async () => {
  let layer: ReturnType<ReturnType<typeof blockFaultLayer>> | undefined
  await runVictim({
    arm: (c, cache) => serveThrough(c, cache, next => (layer = blockFaultLayer({ fault: 'flip', select: fractionOfBlocks(0.5, mulberry32(12)) })(next)))
  }, run => {
    assertBanned(run)
    assert.ok(run.victim.stats().corruptBlocks >= 1, 'the victim\'s cache caught the corrupt blocks')
    assertRefetched(run, layer!.faults)
  })
})

test('hostile: a peer that serves truncated blocks is banned; the reader gets whole blocks', { timeout: 120_000 }, async () => {
  let layer: ReturnType<ReturnType<typeof blockFaultLayer>> | undefined
  await runVictim({
    arm: (c, cache) => serveThrough(c, cache, next => (layer = blockFaultLayer({ fault: 'truncate', truncateToBytes: 1000 })(next)))
  }, run => {
    assertBanned(run)
    assert.ok(run.victim.stats().corruptBlocks >= 1)
    assertRefetched(run, layer!.faults)
  })
})

test('hostile: a peer that sends truncated wire frames is banned at the link; its blocks come from elsewhere', { timeout: 120_000 }, async () => {
  let armed = false
  const frameEncoder = truncatedFrameLayer({ select: () => armed, cutBytes: 100 })(encodeBlocksFrame)
  await runVictim({ frameEncoder, arm: () => { armed = true } }, run => {
    assertBanned(run)
    // The frame never decoded, so nothing of it reached the cache's verification.
    assert.equal(run.victim.stats().corruptBlocks, 0)
    assertRefetched(run, frameEncoder.faults)
  })
})

test('hostile: a peer that stalls on some blocks is routed around by hedging; reads complete with correct data', { timeout: 120_000 }, async () => {
  let layer: ReturnType<ReturnType<typeof blockFaultLayer>> | undefined
  await runVictim({
    // Stalls until its stream closes (the cluster stops), at most 60 s: longer than the whole test reads.
    arm: (c, cache) => serveThrough(c, cache, next => (layer = blockFaultLayer({ fault: 'stall', stallMs: 60_000, select: fractionOfBlocks(0.3, mulberry32(7)) })(next)))
  }, run => {
    const victimService = run.c.agents[VICTIM].service
    assert.ok(victimService.peerSource.stats.hedges >= 1, 'slow requests were hedged to another peer')
    // A staller sent nothing bad: it is routed around, not banned.
    assert.ok(!victimService.status().banned.includes(run.hostileId))
    assert.equal(run.victim.stats().corruptBlocks, 0)
    assertRefetched(run, layer!.faults)
  })
})
