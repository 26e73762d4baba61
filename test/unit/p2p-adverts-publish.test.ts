// Publishing our adverts (src/p2p/adverts.ts) against a recording pubsub: the first advert, the answer to a new
// subscriber, attaching and the other rare news peers act on at once are flooded to every topic peer, the rest goes
// to the gossip mesh only, and a
// block arrival with an advert already due soon does not evaluate the policy again.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createAdverts } from '../../src/p2p/adverts.js'
import { decodeAdvert } from '../../src/p2p/advert.js'
import { newImageState, type ImageState, type ServiceComponents } from '../../src/p2p/components.js'
import { DEFAULT_ADVERT_POLICY as P } from '../../src/p2p/advert-policy.js'
import { DEFAULT_TOPOLOGY_PARAMS } from '../../src/topology/index.js'
import { silentLogger } from '../../src/blockstack/cache.js'

const ROOT = 'ab'.repeat(32)
const BLOCKS = 1024

function setup (): { state: ImageState, adverts: ReturnType<ReturnType<typeof createAdverts>>, at: (ms: number) => void, held: (n: number) => void, sent: Uint8Array[], evaluations: () => number } {
  let nowMs = 0
  let present = 10
  let evaluations = 0
  const sent: Uint8Array[] = []
  const state = newImageState('img', '/vmthunder/image/img/1', 0)
  state.manifest = { imageId: 'img', rootHex: ROOT, blockCount: BLOCKS } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => present, presentBitmap: () => { const bits = new Uint8Array(BLOCKS / 8); for (let i = 0; i < present; i++) bits[i >> 3] |= 1 << (i & 7); return bits } } as unknown as NonNullable<ImageState['store']>
  state.depth = 2
  const pubsub = {
    // Each policy evaluation asks for the topic's subscribers first.
    getSubscribers: () => { evaluations++; return ['peer'] },
    publish: async (_topic: string, data: Uint8Array) => { sent.push(data) }
  }
  const node = { services: { pubsub }, getMultiaddrs: () => [] }
  const components = {
    logger: silentLogger,
    clock: { nowMs: () => nowMs, sleep: async () => {} },
    params: { ...DEFAULT_TOPOLOGY_PARAMS },
    images: new Map([['img', state]]),
    byRoot: new Map([[ROOT, state]]),
    peers: { isBanned: () => false },
    events: { notify: () => {} },
    selfPeerId: 'self',
    node: () => node,
    stopped: () => false
  } as unknown as ServiceComponents
  const adverts = createAdverts({
    uploadLoad: () => 0,
    liveChildren: () => [],
    childLimitOf: () => 8,
    scheduleHeartbeat: () => {},
    maybeFetchProfile: () => {},
    ban: () => {}
  })(components)
  return { state, adverts, at: ms => { nowMs = ms }, held: n => { present = n }, sent, evaluations: () => evaluations }
}

test('adverts: a block arrival with an advert due within the soft interval is not evaluated, unless a held step is crossed', { timeout: 5000 }, () => {
  const { state, adverts, at, held, sent, evaluations } = setup()
  try {
    at(1_000)
    adverts.publish(state)
    held(11)
    at(1_100)
    adverts.publishOnBlocks(state)
    assert.equal(state.publishDueMs, 1_000 + P.softIntervalMs, 'the held-block news is due one soft interval after the last advert')
    const before = evaluations()
    for (let n = 12; n < 40; n++) { held(n); adverts.publishOnBlocks(state) }
    assert.equal(evaluations(), before, 'due soon anyway: not evaluated again')
    held(BLOCKS / P.heldSteps)
    adverts.publishOnBlocks(state)
    assert.equal(evaluations(), before + 1, 'a held step crossed is urgent: evaluated')
    assert.equal(state.publishDueMs, 1_000 + P.minIntervalMs, 'and due sooner')
    assert.equal(sent.length, 1)
  } finally {
    adverts.cancel(state)
  }
})


test('adverts: a quiet agent keeps alive at a growing interval and says so in each advert; news starts over', { timeout: 5000 }, () => {
  const { state, adverts, at, held, sent } = setup()
  try {
    at(1_000)
    adverts.publish(state)
    const gaps: number[] = []
    let lastMs = 1_000
    for (let i = 0; i < 6; i++) {
      adverts.publish(state) // nothing new: only the keep-alive is due
      const dueMs = state.publishDueMs
      assert.ok(dueMs !== undefined)
      at(dueMs)
      adverts.publish(state)
      gaps.push(dueMs - lastMs)
      lastMs = dueMs
    }
    assert.deepEqual(gaps, [5_000, 10_000, 20_000, 40_000, 60_000, 60_000])
    const lifetimes = sent.map(bytes => decodeAdvert(bytes).lifetimeMs)
    assert.deepEqual(lifetimes, [15_000, 30_000, 60_000, 120_000, 180_000, 180_000, 180_000], 'three keep-alive intervals ahead')
    // A block arrives: news, published within the soft interval, and the keep-alive is back to the base.
    held(11)
    adverts.publishOnBlocks(state)
    assert.equal(state.publishDueMs, lastMs + P.softIntervalMs)
    at(lastMs + P.softIntervalMs)
    adverts.publish(state)
    assert.equal(decodeAdvert(sent[sent.length - 1]).lifetimeMs, 3 * P.keepAliveMs)
    adverts.publish(state)
    assert.equal(state.publishDueMs, lastMs + P.softIntervalMs + P.keepAliveMs)
  } finally {
    adverts.cancel(state)
  }
})
