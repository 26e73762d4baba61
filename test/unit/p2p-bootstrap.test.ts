// The bootstrapper (src/p2p/node.ts) between real libp2p nodes over TCP on 127.0.0.1: it dials its bootstrap
// address at start, and when that connection goes it dials again at once, on the disconnect itself, not at its
// next idle check (every BOOTSTRAP_IDLE_CHECK_MS once connected: an idle agent no longer polls 4 times a second).

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { identityFromSeed } from '../../src/identity/key.js'
import { createServer } from 'node:net'
import { createNode, Bootstrapper, isConnectionRefused, BOOTSTRAP_MIN_BACKOFF_MS, type P2PNode } from '../../src/p2p/node.js'

const quiet = { info: () => {}, warn: () => {} }

/** Resolves on the node's next `event` that passes `check`; bounded by the signal. */
async function nextEvent (node: P2PNode, event: 'peer:connect' | 'peer:disconnect', check: (peer: string) => boolean, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const on = (e: CustomEvent): void => { if (check(String(e.detail))) { node.removeEventListener(event, on); resolve() } }
    node.addEventListener(event, on)
    signal.addEventListener('abort', () => { node.removeEventListener(event, on); reject(signal.reason) }, { once: true })
  })
}

test('a bootstrap connection that drops is dialled again on the disconnect', { timeout: 60_000 }, async () => {
  const a = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const c = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  let dials = 0
  // c as the bootstrapper sees it, counting its dials.
  const counted = new Proxy(c, {
    get: (target, key) => {
      if (key === 'dial') return async (...args: Parameters<P2PNode['dial']>) => { dials++; return await target.dial(...args) }
      const value = Reflect.get(target, key)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  const bootstrapper = new Bootstrapper(counted, [a.getMultiaddrs()[0].toString()], quiet)
  try {
    const signal = AbortSignal.timeout(30_000)
    const aId = a.peerId.toString()
    const connected = nextEvent(c, 'peer:connect', p => p === aId, signal)
    const accepted = nextEvent(a, 'peer:connect', p => p === c.peerId.toString(), signal)
    bootstrapper.start()
    await Promise.all([connected, accepted]) // a's side too, or its hang-up below finds nothing to close
    assert.equal(dials, 1)
    // a hangs up: the bootstrapper's own disconnect listener (registered first) has dialled by the time ours runs.
    const dropped = nextEvent(c, 'peer:disconnect', p => p === aId, signal)
    const again = nextEvent(c, 'peer:connect', p => p === aId, signal)
    await a.hangUp(c.peerId)
    await dropped
    assert.equal(dials, 2, 'dialled again on the disconnect')
    await again
  } finally {
    bootstrapper.stop()
    await Promise.all([a.stop(), c.stop()])
  }
})

test('a refused bootstrap dial (the agent restarting) is retried at the shortest backoff, not a growing one', { timeout: 60_000 }, async () => {
  // A port nobody listens on: the host refuses the dial.
  const probe = createServer()
  await new Promise<void>(resolve => probe.listen(0, '127.0.0.1', resolve))
  const port = (probe.address() as { port: number }).port
  await new Promise<void>(resolve => probe.close(() => resolve()))
  const c = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const absent = identityFromSeed(randomBytes(32)).peerId
  const failures: Array<{ retryInMs: number, error: string }> = []
  let enough: () => void = () => {}
  const gotEnough = new Promise<void>(resolve => { enough = resolve })
  const logger = {
    info: () => {},
    warn: (_message: string, fields?: Record<string, unknown>) => {
      failures.push({ retryInMs: fields?.retryInMs as number, error: String(fields?.error) })
      if (failures.length >= 4) enough()
    }
  }
  const bootstrapper = new Bootstrapper(c, [`/ip4/127.0.0.1/tcp/${port}/p2p/${absent}`], logger)
  try {
    bootstrapper.start()
    const timeout = AbortSignal.timeout(30_000)
    await Promise.race([gotEnough, new Promise((_resolve, reject) => timeout.addEventListener('abort', () => reject(new Error(`only ${failures.length} failures`)), { once: true }))])
    assert.ok(failures.every(f => /ECONNREFUSED/.test(f.error)), failures.map(f => f.error).join('; '))
    assert.deepEqual(failures.map(f => f.retryInMs), failures.map(() => BOOTSTRAP_MIN_BACKOFF_MS), 'the backoff does not grow')
  } finally {
    bootstrapper.stop()
    await c.stop()
  }
})

test('isConnectionRefused: the socket error, wrapped as libp2p wraps it, and nothing else', () => {
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' })
  assert.equal(isConnectionRefused(refused), true)
  assert.equal(isConnectionRefused(new Error('dial failed', { cause: refused })), true)
  assert.equal(isConnectionRefused(new AggregateError([new Error('timeout'), refused], 'all dials failed')), true)
  assert.equal(isConnectionRefused(new Error('connection error 10.0.0.1:4001: connect ECONNREFUSED 10.0.0.1:4001')), true)
  assert.equal(isConnectionRefused(new Error('The operation was aborted due to timeout')), false)
  assert.equal(isConnectionRefused(Object.assign(new Error('unreachable'), { code: 'EHOSTUNREACH' })), false)
  assert.equal(isConnectionRefused(undefined), false)
})
