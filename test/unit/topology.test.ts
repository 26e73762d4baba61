import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  admitChild, DEFAULT_SCORE_PARAMS, DEFAULT_TOPOLOGY_PARAMS, depthFromParents, findCycle, fanout, isSilent, MAX_ADVERT_LIFETIME_MS,
  scoreCandidate, selectParents, TopologyParamsError, validateTopologyParams
} from '../../src/topology/index.js'
import type { Advert, Candidate, ParentState, SelectionInput, TopologyParams } from '../../src/topology/index.js'

const P: TopologyParams = { ...DEFAULT_TOPOLOGY_PARAMS }

function advert (peerId: string, depth: number | null, over: Partial<Advert> = {}): Advert {
  return {
    peerId, imageId: 'img', rootHex: 'r1', seq: 1, depth, heldBlocks: depth === 0 ? 100 : 50, totalBlocks: 100,
    childCount: 0, childLimit: 8, uploadLoad: 0.1, ...over
  }
}
function cand (a: Advert, rttMs = 1, receivedAtMs = 10_000): Candidate { return { advert: a, receivedAtMs, rttMs } }
function input (over: Partial<SelectionInput>): SelectionInput {
  return { nowMs: 10_000, selfPeerId: 'me', selfIsSeed: false, candidates: [], parents: [], excluded: new Set(), params: P, ...over }
}
const parent = (peerId: string, sinceMs = 0, failed = false): ParentState => ({ peerId, sinceMs, failed })

test('depthFromParents: 1 + min, null without parents, 0 for a seed', { timeout: 5000 }, () => {
  assert.equal(depthFromParents([3, 1, 2]), 2)
  assert.equal(depthFromParents([]), null)
  assert.equal(depthFromParents([null, null]), null)
  assert.equal(depthFromParents([null, 4]), 5)
  assert.equal(depthFromParents([5], true), 0)
})

test('params: defaults validate, bad fields are named', { timeout: 5000 }, () => {
  assert.equal(validateTopologyParams(P).parentCount, 3)
  const bad: Array<[Partial<TopologyParams>, string]> = [
    [{ parentCount: 0 }, 'parentCount'], [{ heartbeatMs: -1 }, 'heartbeatMs'], [{ advertTimeoutMs: 10 }, 'advertTimeoutMs'],
    [{ replaceMargin: Number.NaN }, 'replaceMargin'], [{ minParentHoldMs: -5 }, 'minParentHoldMs'], [{ childLimit: 1.5 }, 'childLimit'],
    [{ maxDepth: 0 }, 'maxDepth'], [{ score: { ...DEFAULT_SCORE_PARAMS, rttRefMs: 0 } }, 'score.rttRefMs'],
    [{ score: { ...DEFAULT_SCORE_PARAMS, loadWeight: -1 } }, 'score.loadWeight']
  ]
  for (const [over, field] of bad) {
    assert.throws(() => selectParents(input({ params: { ...P, ...over } })), (e: unknown) => {
      assert.ok(e instanceof TopologyParamsError)
      assert.equal(e.name, 'TopologyParamsError')
      assert.equal(e.field, field)
      assert.match(e.message, new RegExp(field.replace('.', '\\.')))
      return true
    })
  }
})

test('a seed has no parents and depth 0', { timeout: 5000 }, () => {
  const r = selectParents(input({ selfIsSeed: true, parents: [parent('x')], candidates: [cand(advert('x', 0))] }))
  assert.deepEqual(r.parents, [])
  assert.equal(r.depth, 0)
  assert.deepEqual(r.dropped, [{ peerId: 'x', reason: 'seed' }])
})

test('filters: self, excluded, stale, other root/image, full, detached and too deep are never chosen', { timeout: 5000 }, () => {
  const candidates = [
    cand(advert('me', 0)),
    cand(advert('banned', 0)),
    cand(advert('stale', 0), 1, 10_000 - P.advertTimeoutMs - 1),
    cand(advert('otherroot', 0, { rootHex: 'r2' })),
    cand(advert('otherimg', 0, { imageId: 'img2' })),
    cand(advert('full', 1, { childCount: 8 })),
    cand(advert('detached', null)),
    cand(advert('deep', 5)),
    cand(advert('ok', 1))
  ]
  const r = selectParents(input({ candidates, excluded: new Set(['banned']), imageId: 'img', rootHex: 'r1', selfDepth: 3 }))
  assert.deepEqual(r.parents, ['ok'])
  assert.equal(r.depth, 2)
})

test('seeds are preferred: highest score, and chosen by a detached agent', { timeout: 5000 }, () => {
  const seed = cand(advert('seed', 0))
  const relay = cand(advert('relay', 1, { heldBlocks: 90 }))
  assert.ok(scoreCandidate('me', seed, DEFAULT_SCORE_PARAMS) > scoreCandidate('me', relay, DEFAULT_SCORE_PARAMS))
  const r1 = selectParents(input({ candidates: [relay, seed], params: { ...P, parentCount: 1 } }))
  assert.deepEqual(r1.parents, ['seed'])
  assert.equal(r1.depth, 1)
  const r2 = selectParents(input({ candidates: [cand(advert('r1', 1)), cand(advert('r2', 1)), cand(advert('s1', 0)), cand(advert('s2', 0))] }))
  assert.deepEqual([...r2.parents].sort(), ['s1', 's2'])
})

test('scores: lower RTT, lower load and more blocks score higher', { timeout: 5000 }, () => {
  const s = (a: Advert, rtt: number): number => scoreCandidate('me', cand(a, rtt), DEFAULT_SCORE_PARAMS)
  assert.ok(s(advert('a', 1), 1) > s(advert('a', 1), 20))
  assert.ok(s(advert('a', 1, { uploadLoad: 0 }), 1) > s(advert('a', 1, { uploadLoad: 0.9 }), 1))
  assert.ok(s(advert('a', 1, { heldBlocks: 90 }), 1) > s(advert('a', 1, { heldBlocks: 10 }), 1))
  for (const x of [s(advert('a', 1), 0), s(advert('a', 0, { uploadLoad: 5 }), 1e9)]) assert.ok(x >= 0 && x <= 1)
})

test('layering: every parent sits at the lowest depth, so edges strictly descend', { timeout: 5000 }, () => {
  const r = selectParents(input({ candidates: [cand(advert('d1', 1)), cand(advert('d2a', 2)), cand(advert('d2b', 2)), cand(advert('d2c', 2))] }))
  // one depth-1 parent is worth less than three at depth 2 only if they are much better; either way one level
  const depths = r.parents.map(id => id.startsWith('d1') ? 1 : 2)
  assert.equal(new Set(depths).size, 1)
  assert.equal(r.depth, 1 + depths[0])
  // a current parent deeper than the others is dropped for depth
  const cands = [cand(advert('a', 1)), cand(advert('b', 2))]
  const r2 = selectParents(input({ candidates: cands, parents: [parent('a'), parent('b')], selfDepth: 3 }))
  assert.deepEqual(r2.parents, ['a'])
  assert.deepEqual(r2.dropped, [{ peerId: 'b', reason: 'depth' }])
  assert.equal(r2.depth, 2)
})

test('feasibility: attached, never a candidate as deep as we are; a parent that moved deeper is dropped', { timeout: 5000 }, () => {
  const r = selectParents(input({ selfDepth: 2, parents: [parent('p')], candidates: [cand(advert('p', 2)), cand(advert('q', 1)), cand(advert('z', 2))] }))
  assert.deepEqual(r.parents, ['q'])
  assert.deepEqual(r.dropped, [{ peerId: 'p', reason: 'depth' }])
  assert.equal(r.depth, 2)
  // detached but still with children: only a seed
  const r2 = selectParents(input({ selfDepth: null, childCount: 2, candidates: [cand(advert('x', 3))] }))
  assert.deepEqual(r2.parents, [])
  assert.equal(r2.depth, null)
  const r3 = selectParents(input({ selfDepth: null, childCount: 2, candidates: [cand(advert('x', 3)), cand(advert('s', 0, { childCount: 8 }))] }))
  assert.deepEqual(r3.parents, ['s'])
  assert.equal(r3.fallbackToSeed, true)
})

test('a lost parent is replaced in the same call (within one heartbeat)', { timeout: 5000 }, () => {
  const candidates = ['a', 'b', 'c', 'd'].map(id => cand(advert(id, 1)))
  const now = 10_000
  // failed: reported by the driver
  const r = selectParents(input({ nowMs: now, selfDepth: 2, candidates, parents: [parent('a'), parent('b', 9_000, true), parent('c')] }))
  assert.equal(r.parents.length, 3)
  assert.ok(!r.parents.includes('b'))
  assert.deepEqual(r.added, ['d'])
  assert.deepEqual(r.dropped, [{ peerId: 'b', reason: 'failed' }])
  // silent: its last advert aged out
  const silent = candidates.map(c => c.advert.peerId === 'c' ? { ...c, receivedAtMs: now - P.advertTimeoutMs - 1 } : c)
  const r2 = selectParents(input({ nowMs: now, selfDepth: 2, candidates: silent, parents: [parent('a'), parent('b'), parent('c')] }))
  assert.deepEqual(r2.dropped, [{ peerId: 'c', reason: 'silent' }])
  assert.deepEqual(r2.added, ['d'])
  // ... unless its advert said it stays true longer (a quiet sender keeps alive less often): then it is kept
  const quiet = silent.map(c => c.advert.peerId === 'c' ? { ...c, lifetimeMs: 60_000 } : c)
  const rq = selectParents(input({ nowMs: now, selfDepth: 2, candidates: quiet, parents: [parent('a'), parent('b'), parent('c')] }))
  assert.deepEqual(rq.dropped, [])
  // a lifetime shorter than our own timeout does not shorten it; one past the bound is cut to the bound
  assert.equal(isSilent({ receivedAtMs: 0, lifetimeMs: 1 }, P.advertTimeoutMs, P), false)
  assert.equal(isSilent({ receivedAtMs: 0, lifetimeMs: 1e9 }, MAX_ADVERT_LIFETIME_MS, P), false)
  assert.equal(isSilent({ receivedAtMs: 0, lifetimeMs: 1e9 }, MAX_ADVERT_LIFETIME_MS + 1, P), true)
  // excluded after corrupt data
  const r3 = selectParents(input({ nowMs: now, selfDepth: 2, candidates, parents: [parent('a')], excluded: new Set(['a']) }))
  assert.deepEqual(r3.dropped, [{ peerId: 'a', reason: 'excluded' }])
  assert.ok(!r3.parents.includes('a') && r3.parents.length === 3)
})

test('with no candidate the agent goes to a seed even when it is full', { timeout: 5000 }, () => {
  const r = selectParents(input({ candidates: [cand(advert('s', 0, { childCount: 8 })), cand(advert('x', 1, { childCount: 8 }))] }))
  assert.deepEqual(r.parents, ['s'])
  assert.equal(r.fallbackToSeed, true)
  assert.equal(r.depth, 1)
  const none = selectParents(input({ candidates: [cand(advert('x', 1, { childCount: 8 }))] }))
  assert.deepEqual(none.parents, [])
  assert.equal(none.depth, null)
})

test('hysteresis: a better candidate replaces a parent only after the hold time and beyond the margin', { timeout: 5000 }, () => {
  const slow = cand(advert('slow', 1, { uploadLoad: 0.95, heldBlocks: 5 }), 40)
  const fast = cand(advert('fast', 1, { uploadLoad: 0, heldBlocks: 95 }), 0.5)
  const params = { ...P, parentCount: 1 }
  const young = selectParents(input({ nowMs: 10_000, params, parents: [parent('slow', 8_000)], candidates: [slow, fast], selfDepth: 2 }))
  assert.deepEqual(young.parents, ['slow'])
  const old = selectParents(input({ nowMs: 10_000, params, parents: [parent('slow', 0)], candidates: [slow, fast], selfDepth: 2 }))
  assert.deepEqual(old.parents, ['fast'])
  assert.deepEqual(old.dropped, [{ peerId: 'slow', reason: 'replaced' }])
  // a slightly better one (within the margin) does not replace
  const a = cand(advert('a', 1), 2)
  const b = cand(advert('b', 1), 1.6)
  const keep = selectParents(input({ nowMs: 10_000, params, parents: [parent('a', 0)], candidates: [a, b], selfDepth: 2 }))
  assert.deepEqual(keep.parents, ['a'])
})

test('a current parent keeps its slot even when its advert shows it full', { timeout: 5000 }, () => {
  const r = selectParents(input({ selfDepth: 2, parents: [parent('p')], candidates: [cand(advert('p', 1, { childCount: 8 }))] }))
  assert.deepEqual(r.parents, ['p'])
  assert.deepEqual(r.dropped, [])
})

test('admitChild bounds fan-out', { timeout: 5000 }, () => {
  assert.deepEqual(admitChild({ childCount: 7, childLimit: 8, isAlreadyChild: false }), { admit: true })
  assert.deepEqual(admitChild({ childCount: 8, childLimit: 8, isAlreadyChild: false }), { admit: false, reason: 'full' })
  assert.deepEqual(admitChild({ childCount: 8, childLimit: 8, isAlreadyChild: true }), { admit: true })
  assert.deepEqual(admitChild({ childCount: 0, childLimit: 8, isAlreadyChild: false, isExcluded: true }), { admit: false, reason: 'excluded' })
  assert.deepEqual(admitChild({ childCount: 0, childLimit: 8, isAlreadyChild: false, selfDepth: null }), { admit: false, reason: 'detached' })
  assert.deepEqual(admitChild({ childCount: 0, childLimit: 8, isAlreadyChild: false, uploadLoad: 0.99, maxUploadLoad: 0.9 }), { admit: false, reason: 'overloaded' })
})

test('selectParents: an agent attaching from nothing does not ask a candidate at its bound of sole children', { timeout: 5000 }, () => {
  // The origin's only child, at its bound of sole children: as our one parent it would refuse us.
  const trunk = advert('trunk', 1, { soleFull: true })
  const origin = advert('origin', 0, { childCount: 1, childLimit: 1 })
  const waiting = selectParents(input({ candidates: [cand(trunk), cand(origin)] }))
  assert.deepEqual([waiting.parents, waiting.fallbackToSeed], [['origin'], true], 'nothing else yet: the full seed, as with no candidate at all')
  // The next level has two relays: both are asked (not a sole child anywhere); with the trunk not full, it is asked.
  const b = advert('b', 2); const c = advert('c', 2)
  assert.deepEqual(selectParents(input({ candidates: [cand(trunk), cand(origin), cand(b), cand(c)] })).parents.sort(), ['b', 'c'])
  assert.deepEqual(selectParents(input({ candidates: [cand(advert('trunk', 1)), cand(origin)] })).parents, ['trunk'])
  // Nor in a set of several: it would refuse us all the same (admit.ts), and a refusal excludes it for a while.
  const t2 = advert('t2', 1)
  assert.deepEqual(selectParents(input({ candidates: [cand(trunk), cand(t2)] })).parents, ['t2'])
  // An agent with children of its own is not attaching from nothing: it may take it.
  assert.deepEqual(selectParents(input({ candidates: [cand(trunk), cand(t2)], childCount: 1, selfDepth: 3 })).parents.sort(), ['t2', 'trunk'])
})

test('admitChild: a relay at soleChildLimit sole children refuses agents attaching from nothing', { timeout: 5000 }, () => {
  const relay = { childCount: 2, childLimit: 8, isAlreadyChild: false, selfDepth: 1, soleChildren: 2, soleChildLimit: 2 }
  // A third agent attaching from nothing (however many parents it asks): refused (it goes a level down).
  assert.deepEqual(admitChild({ ...relay, attaching: true }), { admit: false, reason: 'full' })
  // One already attached elsewhere (a move) or with children of its own: taken, slots permitting.
  assert.deepEqual(admitChild({ ...relay, attaching: false }), { admit: true })
  assert.deepEqual(admitChild({ ...relay, attaching: false, childCount: 8 }), { admit: false, reason: 'full' })
  // Under the bound, renewing, a seed (its slots are the ones it was given), or the bound off: taken.
  assert.deepEqual(admitChild({ ...relay, attaching: true, soleChildren: 1 }), { admit: true })
  assert.deepEqual(admitChild({ ...relay, attaching: true, isAlreadyChild: true }), { admit: true })
  assert.deepEqual(admitChild({ ...relay, attaching: true, selfDepth: 0 }), { admit: true })
  assert.deepEqual(admitChild({ ...relay, attaching: true, soleChildLimit: 0 }), { admit: true })
  assert.equal(DEFAULT_TOPOLOGY_PARAMS.soleChildLimit, 2)
})

test('findCycle and fanout', { timeout: 5000 }, () => {
  assert.equal(findCycle(new Map([['a', ['b']], ['b', ['c']], ['c', []]])), null)
  const c = findCycle(new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]]))
  assert.ok(c !== null && c[0] === c[c.length - 1] && c.length === 4)
  assert.deepEqual(fanout(new Map([['a', ['s']], ['b', ['s', 'a']]])), new Map([['s', 2], ['a', 1]]))
})
