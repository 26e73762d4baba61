// The parent side's child leases (src/p2p/children.ts): a lease lasts 3 heartbeats and at least 5 s, each
// request of a child renews it, and a lapsed lease frees the slot for another agent; children that have us as
// their only parent are bounded (topology/admit.ts).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createChildren, MIN_CHILD_LEASE_MS } from '../../src/p2p/children.js'
import { newImageState, type ImageState, type ServiceComponents } from '../../src/p2p/components.js'
import { DEFAULT_TOPOLOGY_PARAMS } from '../../src/topology/index.js'

const ROOT = 'ab'.repeat(32)

function setup (heartbeatMs: number): { children: ReturnType<ReturnType<typeof createChildren>>, state: ImageState, at: (ms: number) => void, published: () => number } {
  let nowMs = 0
  let published = 0
  const state = newImageState('img', 'topic', 0)
  // A store that holds some blocks of a 10-block image: a relay at depth 1 with 1 child slot.
  state.manifest = { rootHex: ROOT, blockCount: 10 } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => 5 } as unknown as NonNullable<ImageState['store']>
  state.depth = 1
  state.childLimit = 1
  const components = {
    clock: { nowMs: () => nowMs, sleep: async () => {} },
    params: { ...DEFAULT_TOPOLOGY_PARAMS, heartbeatMs },
    byRoot: new Map([[ROOT, state]]),
    images: new Map([['img', state]]),
    peers: { isBanned: () => false }
  } as unknown as ServiceComponents
  const children = createChildren({ publishSoon: () => { published++ } })(components)
  return { children, state, at: (ms) => { nowMs = ms }, published: () => published }
}

test('a child lease lasts at least 5 s, each request renews it, and a lapsed one frees the slot', { timeout: 5000 }, () => {
  const { children, state, at, published } = setup(500)
  assert.deepEqual(children.admit('a', ROOT, false), { accepted: true, childCount: 1, childLimit: 1 })
  assert.equal(published(), 1)
  assert.equal(children.admit('b', ROOT, false)?.accepted, false, 'one slot')
  // 3 heartbeats of 500 ms would end it at 1.5 s; the floor keeps it to 5 s.
  at(MIN_CHILD_LEASE_MS - 1)
  assert.deepEqual(children.live(state), ['a'])
  // A request from the child at 4.999 s renews it for another 5 s; one from a stranger changes nothing.
  children.touch('a', ROOT)
  children.touch('b', ROOT)
  at(2 * MIN_CHILD_LEASE_MS - 2)
  assert.deepEqual(children.live(state), ['a'])
  assert.equal(children.admit('b', ROOT, false)?.accepted, false)
  // Silent past its lease: gone, and a request arriving after that does not bring it back.
  at(2 * MIN_CHILD_LEASE_MS)
  children.touch('a', ROOT)
  assert.deepEqual(children.live(state), [])
  assert.equal(children.admit('b', ROOT, false)?.accepted, true, 'the slot went to another agent')
  assert.equal(children.admit('a', ROOT, false)?.accepted, false)
})

test('with a long heartbeat the lease is 3 heartbeats', { timeout: 5000 }, () => {
  const { children, state, at } = setup(4000)
  children.admit('a', ROOT, false)
  at(3 * 4000 - 1)
  assert.deepEqual(children.live(state), ['a'])
  at(3 * 4000)
  assert.deepEqual(children.live(state), [])
})

test('sole children: the parent counts from each ADMIT; a third agent attaching from nothing is refused, however many parents it asks', { timeout: 5000 }, () => {
  const { children, state } = setup(1000)
  state.childLimit = undefined // the service's, with soleChildLimit 2
  const attaching = { parentCount: 1, attaching: true }
  assert.equal(children.admit('a', ROOT, false, attaching)?.accepted, true)
  assert.equal(children.admit('b', ROOT, false, attaching)?.accepted, true)
  assert.deepEqual(children.admit('c', ROOT, false, attaching), { accepted: false, childCount: 2, childLimit: state.childLimit ?? 8 })
  assert.equal(children.soleFull(state), true, 'its advert says so')
  // Asking two parents from nothing: refused too (if the other refuses, it would be a sole child here).
  assert.equal(children.admit('c', ROOT, false, { parentCount: 2, attaching: true })?.accepted, false)
  // Moving here from another parent (not attaching): taken, it and its subtree keep a path.
  assert.equal(children.admit('d', ROOT, false, { parentCount: 1, attaching: false })?.accepted, true)
  // 'a' renews with three parents now: no longer a sole child, so one more attaching child fits.
  assert.equal(children.admit('a', ROOT, false, { parentCount: 3, attaching: false })?.accepted, true)
  assert.equal(children.admit('e', ROOT, false, attaching)?.accepted, false, "'b' and 'd' are sole children")
  children.admit('d', ROOT, true)
  assert.equal(children.soleFull(state), false)
  assert.equal(children.admit('e', ROOT, false, attaching)?.accepted, true, "'d' left")
  // 'e' asked for three and was given us alone: its next renewal says one parent, and it counts as sole again.
  assert.equal(children.admit('a', ROOT, false, { parentCount: 1, attaching: false })?.accepted, true)
  assert.equal(children.soleFull(state), true, "'a' and 'b' sole again ('e' too)")
  assert.equal(children.admit('h', ROOT, false, { parentCount: 3, attaching: true })?.accepted, false)
  // An older agent's ADMIT (no count) counts as one parent.
  children.forget('e')
  children.forget('a')
  assert.equal(children.admit('f', ROOT, false)?.accepted, true)
  assert.equal(children.admit('g', ROOT, false, attaching)?.accepted, false)
})
