// Publishing our adverts (src/p2p/adverts.ts) against a recording pubsub: the first advert, the answer to a new
// subscriber, attaching and the other rare news peers act on at once are flooded to every topic peer, the rest goes
// to the gossip mesh only, and a
// block arrival with an advert already due soon does not evaluate the policy again. And receiving peers' adverts
// (the topic validator): a candidate that becomes eligible while we lack parents runs our heartbeat at once, and
// so does one that comes back after it hung up (a restarted origin), whose earlier failed admission is lifted.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createAdverts } from '../../src/p2p/adverts.js'
import { decodeAdvert } from '../../src/p2p/advert.js'
import { dropLifetime, newImageState, type ImageState, type ServiceComponents } from '../../src/p2p/components.js'
import { DEFAULT_ADVERT_POLICY as P } from '../../src/p2p/advert-policy.js'
import { DEFAULT_TOPOLOGY_PARAMS } from '../../src/topology/index.js'
import { silentLogger } from '../../src/blockstack/cache.js'

const ROOT = 'ab'.repeat(32)
const BLOCKS = 1024

interface Setup {
  state: ImageState
  adverts: ReturnType<ReturnType<typeof createAdverts>>
  at: (ms: number) => void
  held: (n: number) => void
  sent: Uint8Array[]
  evaluations: () => number
  /** The topic validators subscribe() installs (receiving peers' adverts). */
  validators: Map<string, (from: unknown, message: unknown) => unknown>
  /** Heartbeats the adverts asked for (scheduleHeartbeat). */
  heartbeats: () => number
}

/** An adverts service on one image with a recording pubsub: `present` blocks held, our depth, nothing else. */
function setup (options: { selfPeerId?: string, present?: number, depth?: number | null } = {}): Setup {
  let nowMs = 0
  let present = options.present ?? 10
  let evaluations = 0
  let heartbeats = 0
  const sent: Uint8Array[] = []
  const validators = new Map<string, (from: unknown, message: unknown) => unknown>()
  const state = newImageState('img', '/vmthunder/image/img/1', 0)
  state.manifest = { imageId: 'img', rootHex: ROOT, blockCount: BLOCKS } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => present, presentBitmap: () => { const bits = new Uint8Array(BLOCKS / 8); for (let i = 0; i < present; i++) bits[i >> 3] |= 1 << (i & 7); return bits } } as unknown as NonNullable<ImageState['store']>
  state.depth = options.depth === undefined ? 2 : options.depth
  const pubsub = {
    // Each policy evaluation asks for the topic's subscribers first.
    getSubscribers: () => { evaluations++; return ['peer'] },
    publish: async (_topic: string, data: Uint8Array) => { sent.push(data) },
    topicValidators: validators,
    subscribe: () => {},
    score: { params: { topics: {} } }
  }
  const node = { services: { pubsub }, getMultiaddrs: () => [], getConnections: () => [{}] }
  const components = {
    logger: silentLogger,
    clock: { nowMs: () => nowMs, sleep: async () => {} },
    params: { ...DEFAULT_TOPOLOGY_PARAMS },
    images: new Map([['img', state]]),
    byRoot: new Map([[ROOT, state]]),
    peers: { isBanned: () => false },
    events: { notify: () => {}, sourcesChanged: () => {} },
    selfPeerId: options.selfPeerId ?? 'self',
    node: () => node,
    requireNode: () => node,
    stopped: () => false
  } as unknown as ServiceComponents
  const adverts = createAdverts({
    uploadLoad: () => 0,
    liveChildren: () => [],
    childLimitOf: () => 8,
    scheduleHeartbeat: () => { heartbeats++ },
    maybeFetchProfile: () => {},
    ban: () => {}
  })(components)
  return { state, adverts, at: ms => { nowMs = ms }, held: n => { present = n }, sent, evaluations: () => evaluations, validators, heartbeats: () => heartbeats }
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

test('adverts received: a new candidate, and one back after it hung up, run our heartbeat at once; the one back is no longer excluded', { timeout: 5000 }, () => {
  const origin = setup({ selfPeerId: 'origin', present: BLOCKS, depth: 0 })
  const host = setup({ selfPeerId: 'host', present: 10, depth: null }) // detached: no parents
  try {
    host.adverts.subscribe(host.state)
    const validate = host.validators.get(host.state.topic)!
    const from = { toString: () => 'origin' }
    const receive = (): unknown => {
      origin.adverts.publishForced(origin.state)
      const data = origin.sent.at(-1)!
      return validate(from, { type: 'signed', data, from })
    }
    assert.equal(receive(), 'accept')
    assert.equal(host.heartbeats(), 1, 'a new candidate with a depth: select now')
    origin.at(1_000)
    assert.equal(receive(), 'accept')
    assert.equal(host.heartbeats(), 1, 'the same candidate again: the next heartbeat is soon enough')
    // The origin hangs up (killed); our admission to it failed meanwhile, and excluded it for a while.
    dropLifetime(host.state.candidates.get('origin')!)
    host.state.refused.set('origin', Number.MAX_SAFE_INTEGER)
    origin.at(2_000)
    assert.equal(receive(), 'accept')
    assert.equal(host.heartbeats(), 2, 'back after it hung up: select now')
    assert.equal(host.state.refused.has('origin'), false, 'and the failed admission no longer excludes it')
    origin.at(3_000)
    assert.equal(receive(), 'accept')
    assert.equal(host.heartbeats(), 2, 'once per return')
  } finally {
    origin.adverts.cancel(origin.state)
    host.adverts.cancel(host.state)
  }
})
