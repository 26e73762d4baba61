// The heartbeat's order of work (src/p2p/heartbeat.ts): an agent without a working parent asks for admission
// at once, with its RTT probes still out (its VM's reads wait for a parent); an attached agent measures first.
// The links are fakes that record the order of calls; a probe answers only when the test says so.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHeartbeat, SEED_HEARTBEAT_EVERY_TICKS } from '../../src/p2p/heartbeat.js'
import { createBeat } from '../../src/beat.js'
import { createDirectory } from '../../src/p2p/directory.js'
import { newImageState, type ImageState, type ServiceComponents } from '../../src/p2p/components.js'
import type { AdvertBody } from '../../src/p2p/advert.js'
import { DEFAULT_TOPOLOGY_PARAMS } from '../../src/topology/index.js'

const ROOT = 'cd'.repeat(32)

function advert (depth: number): AdvertBody {
  return {
    imageId: 'img', rootHex: ROOT, seq: 1, depth, heldBlocks: depth === 0 ? 10 : 5, totalBlocks: 10, childCount: 0, childLimit: 8,
    uploadLoad: 0, manifestAvailable: true, summary: { groupBlocks: 1, levels: new Uint8Array(3) }, addrs: []
  }
}

/** The heartbeat's components around one image's state; `link` makes the fake links. */
function componentsFor (state: ImageState, link: (peerId: string) => unknown): ServiceComponents {
  return {
    selfPeerId: 'self',
    logger: { info () {}, warn () {}, error () {}, debug () {} },
    clock: { nowMs: () => 1000 },
    random: () => 0.5,
    params: { ...DEFAULT_TOPOLOGY_PARAMS },
    images: new Map([['img', state]]),
    byRoot: new Map([[ROOT, state]]),
    peers: { link, existingLink: () => undefined, isBanned: () => false },
    events: { notify () {}, sourcesChanged () {} },
    stopSignal: new AbortController().signal,
    node: () => ({}),
    stopped: () => false
  } as unknown as ServiceComponents
}

function setup (): { state: ImageState, calls: string[], answerProbes: () => void, run: () => Promise<void> } {
  const state = newImageState('img', 'topic', 0)
  state.manifest = { imageId: 'img', rootHex: ROOT, root: new Uint8Array(32), blockCount: 10, originPublicKey: new Uint8Array(0) } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => 5 } as unknown as NonNullable<ImageState['store']>
  const calls: string[] = []
  let answer!: () => void
  const probes = { promise: new Promise<void>(resolve => { answer = resolve }), resolve: () => { answer() } }
  const link = (peerId: string): unknown => ({
    rttMs: undefined,
    rttSampledAtMs: undefined,
    ping: async (signal: AbortSignal) => {
      calls.push(`ping ${peerId}`)
      await Promise.race([probes.promise, new Promise((_resolve, reject) => signal.addEventListener('abort', () => { reject(signal.reason) }, { once: true }))])
      calls.push(`pong ${peerId}`)
      return 1
    },
    admit: async () => {
      calls.push(`admit ${peerId}`)
      return { accepted: true, childCount: 1, childLimit: 8 }
    }
  })
  const heartbeat = createHeartbeat({ liveChildren: () => [], publish: () => {}, maybeFetchProfile: () => {} })(componentsFor(state, link))
  return {
    state,
    calls,
    answerProbes: () => { probes.resolve() },
    run: async () => {
      heartbeat.schedule(state)
      // schedule() runs one heartbeat now; it is done when it clears its running flag.
      for (let i = 0; i < 1000 && state.heartbeatRunning; i++) await new Promise(resolve => setImmediate(resolve))
    }
  }
}

test('heartbeat: a detached agent asks for admission without waiting for its RTT probes', { timeout: 10_000 }, async () => {
  const { state, calls, answerProbes, run } = setup()
  state.candidates.set('seed', { advert: advert(0), receivedAtMs: 1000 })
  const done = run()
  // The admission went out while the probe to the same peer is still unanswered.
  for (let i = 0; i < 1000 && !calls.includes('admit seed'); i++) await new Promise(resolve => setImmediate(resolve))
  assert.deepEqual(calls, ['ping seed', 'admit seed'])
  await done
  assert.deepEqual(state.parents.map(p => p.peerId), ['seed'])
  assert.equal(state.depth, 1)
  answerProbes()
})

test('heartbeat: an attached agent measures its candidates before it selects', { timeout: 10_000 }, async () => {
  const { state, calls, answerProbes, run } = setup()
  state.candidates.set('seed', { advert: advert(0), receivedAtMs: 1000 })
  state.candidates.set('relay', { advert: advert(1), receivedAtMs: 1000 })
  state.parents = [{ peerId: 'seed', sinceMs: 0, failed: false }]
  state.depth = 1
  const done = run()
  for (let i = 0; i < 1000 && !calls.includes('ping relay'); i++) await new Promise(resolve => setImmediate(resolve))
  for (let i = 0; i < 50; i++) await new Promise(resolve => setImmediate(resolve))
  assert.deepEqual(calls, ['ping relay'], 'nothing is asked before the probe answers')
  answerProbes()
  await done
  assert.deepEqual(calls, ['ping relay', 'pong relay', 'admit seed'])
  assert.deepEqual(state.parents.map(p => p.peerId), ['seed'])
})

test('heartbeat: the timer skips a seed with no parent or child; with peers it runs once in SEED_HEARTBEAT_EVERY_TICKS', { timeout: 10_000 }, async () => {
  const state = newImageState('img', 'topic', 0)
  state.manifest = { imageId: 'img', rootHex: ROOT, root: new Uint8Array(32), blockCount: 10, originPublicKey: new Uint8Array(0) } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => 10 } as unknown as NonNullable<ImageState['store']> // every block: a seed
  let children: string[] = []
  const published: number[] = []
  const components = componentsFor(state, () => { throw new Error('a seed asks nobody') })
  const heartbeat = createHeartbeat({ liveChildren: () => children, publish: () => { published.push(1) }, maybeFetchProfile: () => {} })(components)
  const ticked = async (): Promise<number> => {
    const before = published.length
    heartbeat.tick()
    for (let i = 0; i < 1000 && state.heartbeatRunning; i++) await new Promise(resolve => setImmediate(resolve))
    return published.length - before
  }
  let alone = 0
  for (let i = 0; i < 2 * SEED_HEARTBEAT_EVERY_TICKS; i++) alone += await ticked()
  assert.equal(alone, 0, 'alone: no heartbeat')
  state.candidates.set('peer', { advert: advert(1), receivedAtMs: 1000 })
  let withPeers = 0
  for (let i = 0; i < 3 * SEED_HEARTBEAT_EVERY_TICKS; i++) withPeers += await ticked()
  assert.equal(withPeers, 3, 'a peer advertised the image: housekeeping only, once in SEED_HEARTBEAT_EVERY_TICKS')
  assert.ok(SEED_HEARTBEAT_EVERY_TICKS >= 5)
  state.candidates.clear()
  // (the service's liveChildren is the lease-checked view of state.children)
  children = ['child']; state.children.set('child', Infinity)
  assert.equal(await ticked(), 1, 'a child: heartbeats')
  children = []; state.children.clear()
  assert.equal(await ticked(), 0)
  state.store = { presentCount: () => 9 } as unknown as NonNullable<ImageState['store']>
  assert.equal(await ticked(), 1, 'not a seed (a block evicted): heartbeats, to find parents')
})

test('attach grace: a first attach waits it out; an agent whose parents failed reads from the last resort at once', { timeout: 10_000 }, async () => {
  const { state, run, answerProbes } = setup()
  const directory = createDirectory({ scheduleHeartbeat: () => {}, ban: () => {} })(componentsFor(state, () => ({})))
  const manifest = state.manifest as NonNullable<ImageState['manifest']>
  assert.equal(directory.attaching(manifest), true, 'never attached, within the grace')
  state.candidates.set('seed', { advert: advert(0), receivedAtMs: 1000 })
  await run()
  answerProbes()
  assert.deepEqual(state.parents.map(p => p.peerId), ['seed'])
  assert.equal(directory.attaching(manifest), false, 'attached')
  // Its relay died (still within the grace counted from the image's start): no second grace.
  state.parents = state.parents.map(p => ({ ...p, failed: true }))
  assert.equal(directory.attaching(manifest), false, 'lost its parents: the last resort at once, within its budget')
})

test('canAttach: an agent that holds a depth counts only shallower free slots as room (the last-resort budget applies only then)', { timeout: 10_000 }, () => {
  const state = setup().state
  const connected = new Set(['relay', 'deep'])
  const directory = createDirectory({ scheduleHeartbeat: () => {}, ban: () => {} })({ ...componentsFor(state, () => ({})), connected } as unknown as ServiceComponents)
  const manifest = state.manifest as NonNullable<ImageState['manifest']>
  state.candidates.set('deep', { advert: advert(2), receivedAtMs: 1000 })
  assert.equal(directory.canAttach(manifest), true, 'detached: any free slot is room')
  // An orphan holding depth 2 (its relay died) takes only depth 0 or 1: a free slot at depth 2 is not room.
  state.depth = 2
  state.orphanedSinceMs = 900
  assert.equal(directory.canAttach(manifest), false, 'orphan at depth 2, free slot at depth 2')
  state.candidates.set('relay', { advert: advert(1), receivedAtMs: 1000 })
  assert.equal(directory.canAttach(manifest), true, 'a free slot at depth 1')
  // Attached (a working parent) at depth 2: the same rule.
  state.orphanedSinceMs = null
  state.parents = [{ peerId: 'p', sinceMs: 0, failed: false }]
  state.candidates.delete('relay')
  assert.equal(directory.canAttach(manifest), false, 'attached at depth 2, free slot at depth 2')
})

test('heartbeat: ticks on the agent\'s beat when the beat\'s period is heartbeatMs, and leaves it on stop', { timeout: 10_000 }, async () => {
  const state = newImageState('img', 'topic', 0)
  state.manifest = { imageId: 'img', rootHex: ROOT, root: new Uint8Array(32), blockCount: 10, originPublicKey: new Uint8Array(0) } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => 10 } as unknown as NonNullable<ImageState['store']> // a seed...
  state.children.set('child', Infinity) // ... with a child: heartbeats on every tick
  const published: number[] = []
  const components = componentsFor(state, () => { throw new Error('a seed asks nobody') })
  const beatOf = (periodMs: number): ReturnType<typeof createBeat> => createBeat({ periodMs, setInterval: () => { throw new Error('the test fires the beat') } })
  const settle = async (): Promise<void> => { for (let i = 0; i < 1000 && state.heartbeatRunning; i++) await new Promise(resolve => setImmediate(resolve)) }

  const beat = beatOf(components.params.heartbeatMs)
  const heartbeat = createHeartbeat({ liveChildren: () => ['child'], publish: () => { published.push(1) }, maybeFetchProfile: () => {}, beat })(components)
  heartbeat.start()
  await settle()
  const afterStart = published.length
  beat.fire(); await settle()
  assert.equal(published.length, afterStart + 1, 'one beat: one heartbeat')
  heartbeat.stop()
  beat.fire(); await settle()
  assert.equal(published.length, afterStart + 1, 'stopped: the beat no longer ticks it')

  const other = beatOf(components.params.heartbeatMs * 2)
  const own = createHeartbeat({ liveChildren: () => ['child'], publish: () => { published.push(1) }, maybeFetchProfile: () => {}, beat: other })(components)
  own.start()
  await settle()
  const before = published.length
  other.fire(); await settle()
  assert.equal(published.length, before, 'another period: the heartbeat keeps its own timer, not the beat')
  own.stop()
})

test('heartbeat: ADMIT reports the parents the child has to a kept parent, and all it asks to a new one; attaching only from nothing', { timeout: 10_000 }, async () => {
  // What a relay counts sole children by (topology/admit.ts): a child given one parent of three says 1 at its next renewal.
  const heard = new Map<string, { parentCount: number, attaching: boolean }>()
  const link = (peerId: string): unknown => ({
    rttMs: 1,
    rttSampledAtMs: 1000,
    ping: async () => 1,
    admit: async (_root: Uint8Array, _leave: boolean, _signal: AbortSignal, asked: { parentCount: number, attaching: boolean }) => {
      heard.set(peerId, asked)
      return { accepted: peerId === 'p', childCount: 1, childLimit: 8 }
    }
  })
  const beat = async (state: ImageState): Promise<void> => {
    const heartbeat = createHeartbeat({ liveChildren: () => [], publish: () => {}, maybeFetchProfile: () => {} })(componentsFor(state, link))
    heartbeat.schedule(state)
    for (let i = 0; i < 1000 && state.heartbeatRunning; i++) await new Promise(resolve => setImmediate(resolve))
  }
  const state = newImageState('img', 'topic', 0)
  state.manifest = { imageId: 'img', rootHex: ROOT, root: new Uint8Array(32), blockCount: 10, originPublicKey: new Uint8Array(0) } as unknown as NonNullable<ImageState['manifest']>
  state.store = { presentCount: () => 5 } as unknown as NonNullable<ImageState['store']>
  for (const id of ['p', 'q', 'r']) state.candidates.set(id, { advert: advert(1), receivedAtMs: 1000 })
  // From nothing: three asked, each told 3, attaching; only p accepts.
  await beat(state)
  assert.deepEqual(Object.fromEntries(heard), { p: { parentCount: 3, attaching: true }, q: { parentCount: 3, attaching: true }, r: { parentCount: 3, attaching: true } })
  assert.deepEqual(state.parents.map(p => p.peerId), ['p'])
  // The next heartbeat (q and r excluded a while by their refusals), a new candidate s: p, kept, hears 1, the
  // parents we have; s hears 2, the parents we stripe over if it accepts; neither is attaching (we have a parent).
  state.candidates.set('s', { advert: advert(1), receivedAtMs: 1000 })
  heard.clear()
  await beat(state)
  assert.deepEqual(Object.fromEntries(heard), { p: { parentCount: 1, attaching: false }, s: { parentCount: 2, attaching: false } })
})
