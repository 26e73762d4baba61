// The agent's beat (src/beat.ts): one timer for its once-a-second work. The beat itself on an injected timer;
// gossipsub's heartbeat and score decay taken over onto it on a real libp2p node (the takeover reaches into
// @libp2p/gossipsub's internals: an upgrade that moves them fails here, not silently at rest); the p2p heartbeat
// on it when the periods agree.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createBeat } from '../../src/beat.js'
import { createNode, runGossipsubOnBeat, GOSSIP_ALONE_EVERY_BEATS, type P2PNode } from '../../src/p2p/node.js'
import { identityFromSeed } from '../../src/identity/key.js'

test('beat: tasks run in the order added, each on its own; a removed task does not run, even later in the same beat', () => {
  const intervals: Array<{ fn: () => void, ms: number }> = []
  const cleared: unknown[] = []
  const errors: unknown[] = []
  const beat = createBeat({
    periodMs: 250,
    onError: err => { errors.push(err) },
    setInterval: (fn, ms) => { intervals.push({ fn, ms }); return intervals.length },
    clearInterval: handle => { cleared.push(handle) }
  })
  assert.equal(beat.periodMs, 250)
  const ran: string[] = []
  beat.add(() => { ran.push('a') })
  const removeB = beat.add(() => { ran.push('b'); throw new Error('b failed') })
  let removeD: () => void = () => {}
  beat.add(() => { ran.push('c'); removeD() })
  removeD = beat.add(() => { ran.push('d') })
  beat.start(); beat.start()
  assert.equal(intervals.length, 1, 'start is idempotent: one timer')
  assert.equal(intervals[0].ms, 250)
  intervals[0].fn()
  assert.deepEqual(ran, ['a', 'b', 'c'], 'b threw and c still ran; c removed d, which did not run')
  assert.equal(errors.length, 1)
  assert.equal((errors[0] as Error).message, 'b failed')
  removeB()
  ran.length = 0
  beat.fire()
  assert.deepEqual(ran, ['a', 'c'])
  beat.stop(); beat.stop()
  assert.deepEqual(cleared, [1], 'stop clears the one timer once')
  assert.throws(() => createBeat({ periodMs: 0 }), RangeError)
})

/** Resolves once check() holds, looked at on each turn of the event loop; bounded. */
async function until (check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const signal = AbortSignal.timeout(timeoutMs)
  while (!check()) {
    if (signal.aborted) throw new Error(`timed out waiting: ${what}`)
    await new Promise(resolve => setImmediate(resolve))
  }
}

test('beat: gossipsub\'s heartbeat and score decay run on the beat, not on timers of their own (alone, once in 10 beats)', { timeout: 30_000 }, async () => {
  let node: P2PNode | undefined
  let other: P2PNode | undefined
  try {
    node = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
    const pubsub = node.services.pubsub
    const internals = pubsub as unknown as { status: { heartbeatTimeout: { _destroyed?: boolean } }, score: { _backgroundInterval?: unknown } }
    assert.notEqual(internals.score._backgroundInterval, undefined, 'before: gossipsub decays scores on its own interval')
    assert.equal(runGossipsubOnBeat(pubsub, createBeat({ periodMs: 700 }), () => {}), undefined, 'a beat of another period than gossipsub\'s heartbeat: not taken over')
    assert.notEqual(internals.score._backgroundInterval, undefined)

    const beat = createBeat() // never started: it beats only when fired here
    const errors: unknown[] = []
    const leave = runGossipsubOnBeat(pubsub, beat, err => { errors.push(err) })
    assert.equal(typeof leave, 'function', 'taken over: @libp2p/gossipsub\'s internals are as this code expects')
    assert.equal(internals.status.heartbeatTimeout._destroyed, true, 'gossipsub\'s heartbeat timer is cleared')
    assert.equal(internals.score._backgroundInterval, undefined, 'gossipsub\'s score decay interval is stopped')

    let heartbeats = 0
    const target = pubsub as unknown as EventTarget
    target.addEventListener('gossipsub:heartbeat', () => { heartbeats++ })
    const settled = async (): Promise<void> => { for (let i = 0; i < 10; i++) await new Promise(resolve => setImmediate(resolve)) }
    // Alone (no peer): once in GOSSIP_ALONE_EVERY_BEATS beats.
    for (let i = 0; i < 2 * GOSSIP_ALONE_EVERY_BEATS; i++) { beat.fire(); await settled() }
    assert.equal(heartbeats, 2, 'alone: one heartbeat in GOSSIP_ALONE_EVERY_BEATS beats')
    // With a peer: every beat.
    other = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
    await node.dial(other.getMultiaddrs()[0], { signal: AbortSignal.timeout(20_000) })
    await until(() => pubsub.getPeers().length > 0, 'gossipsub sees the peer')
    for (let i = 1; i <= 3; i++) {
      beat.fire()
      await settled()
      assert.equal(heartbeats, 2 + i, `with a peer: one gossipsub heartbeat per beat (beat ${i})`)
    }
    leave!()
    beat.fire()
    await settled()
    assert.equal(heartbeats, 5, 'left the beat: no more heartbeats from it')
    assert.deepEqual(errors, [])
  } finally {
    await node?.stop()
    await other?.stop()
  }
})
