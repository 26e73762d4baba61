// Peer exchange (src/p2p/peer-exchange.ts) between real libp2p nodes over TCP on 127.0.0.1: agents that share
// only a bootstrap peer end up connected to each other; a peer list names agents only (not any libp2p node),
// never the asker; the server answers a peer once per interval; a target bounds the dials; bad lists get a
// typed error. Time for the rate limit is a virtual clock that moves only when the test says.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { identityFromSeed } from '../../src/identity/key.js'
import { createNode, type P2PNode } from '../../src/p2p/node.js'
import { silentLogger } from '../../src/blockstack/cache.js'
import {
  createPeerExchange, decodePeerList, encodePeerList, requestPeerList, PEER_EXCHANGE_PROTOCOL, PEX_SERVE_INTERVAL_MS, PEX_FIRST_REASK_MS as FIRST, PEX_REASK_MS, PEX_SETTLE_MS,
  PEX_IDLE_TICK_MS, PEX_TICK_MS, nextTickDelayMs,
  MAX_PEX_PEERS, type PeerExchange
} from '../../src/p2p/peer-exchange.js'

const AGENT_PROTOCOL = '/vmthunder/test/agent/1'

interface Agent {
  node: P2PNode
  id: string
  pex: PeerExchange
  clock: { nowMs: () => number, sleep: () => Promise<void>, advance: (ms: number) => void }
  stop: AbortController
  /** How often peer exchange listed the node's connections. */
  listings: () => number
}

/** A libp2p node with peer exchange; `agent: false` makes a plain node (no agent protocol, no peer exchange). */
async function agent (options: { target?: number, agent?: boolean, askOnConnect?: boolean } = {}): Promise<Agent> {
  const node = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  let nowMs = 1_000_000
  const clock = { nowMs: () => nowMs, sleep: async () => {}, advance: (ms: number) => { nowMs += ms } }
  const stop = new AbortController()
  let listings = 0
  // The node as peer exchange sees it, counting its listings of the connections.
  const counted = new Proxy(node, {
    get: (target, key) => {
      if (key === 'getConnections') return (...args: Parameters<P2PNode['getConnections']>) => { listings++; return target.getConnections(...args) }
      const value = Reflect.get(target, key)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  const pex = createPeerExchange({
    node: () => counted,
    selfPeerId: node.peerId.toString(),
    isBanned: () => false,
    agentProtocol: AGENT_PROTOCOL,
    logger: silentLogger,
    clock,
    random: Math.random,
    signal: stop.signal,
    targetConnections: options.target
  })
  if (options.agent !== false) {
    await node.handle(AGENT_PROTOCOL, (stream) => { stream.abort(new Error('unused')) })
    await node.handle(PEER_EXCHANGE_PROTOCOL, (stream, connection) => { void pex.handle(stream, connection) })
    if (options.askOnConnect !== false) node.addEventListener('peer:connect', event => { void pex.connected(event.detail.toString()) })
  }
  return { node, id: node.peerId.toString(), pex, clock, stop, listings: () => listings }
}

async function stopAll (agents: Agent[]): Promise<void> {
  for (const a of agents) { a.stop.abort(); a.pex.stop() }
  await Promise.all(agents.map(async a => { await a.node.stop() }))
}

/** Resolves once `check()` holds, checked now and on each of the node's `event`s; bounded by the signal. */
async function until (node: P2PNode, event: 'peer:connect' | 'peer:update', check: () => Promise<boolean> | boolean, what: string, signal: AbortSignal): Promise<void> {
  if (await check()) return
  await new Promise<void>((resolve, reject) => {
    const onEvent = (): void => { void Promise.resolve(check()).then(yes => { if (yes) done() }) }
    const onAbort = (): void => { done(new Error(`${what}: ${String(signal.reason)}`)) }
    const done = (err?: Error): void => {
      node.removeEventListener(event, onEvent)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve(); else reject(err)
    }
    node.addEventListener(event, onEvent)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** `node` has a connection to `peer`. */
async function connectedTo (node: P2PNode, peer: string, signal: AbortSignal): Promise<void> {
  await until(node, 'peer:connect', () => node.getConnections().some(c => c.remotePeer.toString() === peer), `no connection to ${peer}`, signal)
}

/** `node`'s peer store knows `peer` speaks `protocol` (identify done). */
async function identified (node: P2PNode, peer: string, protocol: string, signal: AbortSignal): Promise<void> {
  await until(node, 'peer:update', async () => (await node.peerStore.get(peerIdFromString(peer)).catch(() => undefined))?.protocols.includes(protocol) === true, `${peer} not identified`, signal)
}

test('agents that share only a bootstrap peer get connected to each other', { timeout: 60_000 }, async () => {
  const agents = [await agent(), await agent(), await agent()]
  const [a, b, c] = agents
  try {
    const signal = AbortSignal.timeout(30_000)
    await b.node.dial(a.node.getMultiaddrs()[0], { signal })
    await identified(a.node, b.id, AGENT_PROTOCOL, signal)
    await c.node.dial(a.node.getMultiaddrs()[0], { signal })
    // c asks a on connecting, hears of b and dials it.
    await connectedTo(c.node, b.id, signal)
    await connectedTo(b.node, c.id, signal)
    assert.equal(c.pex.stats().dialled, 1)
    assert.ok(a.pex.stats().served >= 2, `a served ${a.pex.stats().served} lists`)
  } finally {
    await stopAll(agents)
  }
})

test('a peer list names agents only, never the asker, and a peer gets one list per interval', { timeout: 60_000 }, async () => {
  const a = await agent()
  const b = await agent()
  const plain = await agent({ agent: false })
  const asker = await agent({ askOnConnect: false })
  try {
    const signal = AbortSignal.timeout(30_000)
    for (const x of [b, plain]) await x.node.dial(a.node.getMultiaddrs()[0], { signal })
    await identified(a.node, b.id, AGENT_PROTOCOL, signal)
    await identified(a.node, plain.id, '/ipfs/id/1.0.0', signal)
    // The asker is an agent that asks by hand here (not on connecting).
    await asker.node.dial(a.node.getMultiaddrs()[0], { signal })
    await identified(a.node, asker.id, AGENT_PROTOCOL, signal)
    const first = await requestPeerList(asker.node, a.node.peerId, signal)
    const ids = first.map(e => e.peerId.toString())
    assert.ok(ids.includes(b.id), 'the other agent is listed')
    assert.ok(!ids.includes(plain.id), 'a node without the agent protocol is not')
    assert.ok(!ids.includes(asker.id), 'the asker is not')
    const listed = first.find(e => e.peerId.toString() === b.id)!
    assert.ok(listed.addrs.some(addr => b.node.getMultiaddrs().some(m => m.decapsulateCode(421).equals(addr))), `b's listen address is listed: ${listed.addrs.map(x => x.toString()).join(' ')}`)
    // Again at once: an empty list; after the interval: the list again.
    assert.deepEqual(await requestPeerList(asker.node, a.node.peerId, signal), [])
    a.clock.advance(PEX_SERVE_INTERVAL_MS)
    assert.ok((await requestPeerList(asker.node, a.node.peerId, signal)).some(e => e.peerId.toString() === b.id))
  } finally {
    await stopAll([a, b, plain, asker])
  }
})

test('an agent asks its peer again after 0.25 s, 0.5 s... while its swarm changes, then once a minute', { timeout: 60_000 }, async () => {
  const a = await agent()
  // c is told of its connection to a by hand here; a's answers count c's asks of a.
  const c = await agent({ askOnConnect: false })
  const b = await agent({ askOnConnect: false })
  const d = await agent({ askOnConnect: false })
  try {
    const signal = AbortSignal.timeout(30_000)
    const advance = (ms: number): void => { for (const x of [a, c]) x.clock.advance(ms) }
    const askedAfter = async (ms: number): Promise<number> => { advance(ms); await c.pex.tick(); return a.pex.stats().served }
    await c.node.dial(a.node.getMultiaddrs()[0], { signal })
    await c.pex.connected(a.id) // asked on connecting (or now): a knows no one else yet
    assert.equal(a.pex.stats().served, 1)
    assert.equal(await askedAfter(FIRST - 1), 1, 'not again at once')
    assert.equal(await askedAfter(1), 2)
    // b comes to a: c's next answer names it, which is news and keeps c asking at the doubling waits.
    await b.node.dial(a.node.getMultiaddrs()[0], { signal })
    await identified(a.node, b.id, AGENT_PROTOCOL, signal)
    assert.equal(await askedAfter(2 * FIRST - 1), 2, 'then not within twice as long')
    assert.equal(await askedAfter(1), 3)
    await connectedTo(c.node, b.id, signal)
    assert.equal(c.pex.stats().dialled, 1)
    // Nothing new since that answer: after PEX_SETTLE_MS c stops asking a at the doubling waits (b, never asked,
    // is asked at that tick).
    await d.node.dial(a.node.getMultiaddrs()[0], { signal })
    await identified(a.node, d.id, AGENT_PROTOCOL, signal)
    assert.equal(await askedAfter(PEX_SETTLE_MS), 3, 'settled: not at the doubling wait')
    assert.equal(await askedAfter(PEX_REASK_MS - PEX_SETTLE_MS - 1), 3, 'nor within a minute of the last ask')
    assert.equal(await askedAfter(1), 4)
    await connectedTo(c.node, d.id, signal)
    assert.equal(c.pex.stats().dialled, 2)
  } finally {
    await stopAll([a, b, c, d])
  }
})

test('settled, the timer\'s ticks leave the connections alone until a peer can fall due', { timeout: 60_000 }, async () => {
  const a = await agent({ askOnConnect: false }) // a does not ask c: serving it would list c's connections too
  const c = await agent({ askOnConnect: false })
  try {
    const signal = AbortSignal.timeout(30_000)
    await c.node.dial(a.node.getMultiaddrs()[0], { signal })
    await c.pex.connected(a.id)
    assert.equal(a.pex.stats().served, 1)
    c.clock.advance(PEX_SETTLE_MS)
    await c.pex.tick() // the first settled tick looks once
    const listed = c.listings()
    assert.ok(listed > 0)
    // Four ticks a second for almost PEX_IDLE_TICK_MS: none lists the connections (each did before).
    for (let t = PEX_TICK_MS; t < PEX_IDLE_TICK_MS; t += PEX_TICK_MS) { c.clock.advance(PEX_TICK_MS); await c.pex.tick() }
    assert.equal(c.listings(), listed)
    c.clock.advance(PEX_TICK_MS)
    await c.pex.tick()
    assert.ok(c.listings() > listed, 'it looks again after PEX_IDLE_TICK_MS')
    assert.equal(a.pex.stats().served, 1, 'and asks nobody within the minute')
    // News (a connection opened) brings the ticks back at once.
    await c.pex.connected(a.id)
    const afterNews = c.listings()
    c.clock.advance(PEX_TICK_MS)
    await c.pex.tick()
    assert.ok(c.listings() > afterNews)
  } finally {
    await stopAll([a, c])
  }
})

test('an agent dials no more than its target from the lists it gets', { timeout: 60_000 }, async () => {
  const a = await agent()
  const b = await agent()
  const c = await agent({ target: 1 })
  try {
    const signal = AbortSignal.timeout(30_000)
    await b.node.dial(a.node.getMultiaddrs()[0], { signal })
    await identified(a.node, b.id, AGENT_PROTOCOL, signal)
    await c.node.dial(a.node.getMultiaddrs()[0], { signal })
    // At its target with one connection: it neither asks on connect nor on a tick.
    await c.pex.connected(a.id)
    await c.pex.tick()
    assert.deepEqual(c.pex.stats(), { asked: 0, served: 0, dialled: 0, connectedByExchange: 0, failed: 0 })
    assert.equal(c.node.getConnections().length, 1)
  } finally {
    await stopAll([a, b, c])
  }
})

test('peer lists round-trip, and bad ones fail with PeerListDecodeError', () => {
  const ids = [1, 2].map(i => peerIdFromString(identityFromSeed(new Uint8Array(32).fill(i)).peerId))
  const entries = [
    { peerId: ids[0], addrs: [multiaddr('/ip4/10.0.0.1/tcp/7400'), multiaddr('/ip6/::1/tcp/9')] },
    { peerId: ids[1], addrs: [] }
  ]
  const bytes = encodePeerList(entries)
  const again = decodePeerList(bytes)
  assert.deepEqual(again.map(e => [e.peerId.toString(), e.addrs.map(x => x.toString())]), entries.map(e => [e.peerId.toString(), e.addrs.map(x => x.toString())]))
  const bad: Array<[string, Uint8Array]> = [
    ['empty', new Uint8Array(0)],
    ['truncated', bytes.subarray(0, bytes.length - 3)],
    ['trailing bytes', Buffer.concat([bytes, Uint8Array.of(0)])],
    ['too many peers', Uint8Array.of(MAX_PEX_PEERS + 1)],
    ['bad peer id', Buffer.concat([Uint8Array.of(1, 3), Buffer.from('abc'), Uint8Array.of(0)])],
    ['bad address', Buffer.concat([Uint8Array.of(1, ids[0].toString().length), Buffer.from(ids[0].toString()), Uint8Array.of(1, 2, 0xff, 0xff)])]
  ]
  for (const [what, input] of bad) {
    assert.throws(() => decodePeerList(input), (err: Error) => err.name === 'PeerListDecodeError', what)
  }
})

test('the timer: every PEX_TICK_MS while the swarm changes; settled, when a peer falls due; alone, not until a connection opens', () => {
  const now = 100_000
  assert.equal(nextTickDelayMs(now, now - 10, Infinity, 0), PEX_TICK_MS, 'news: ticks soon, with or without connections')
  assert.equal(nextTickDelayMs(now, now - PEX_SETTLE_MS, now + 60_000, 3), PEX_IDLE_TICK_MS, 'settled: at most PEX_IDLE_TICK_MS away')
  assert.equal(nextTickDelayMs(now, now - PEX_SETTLE_MS, now + 1200, 3), 1200, 'settled: when the first peer falls due')
  assert.equal(nextTickDelayMs(now, now - PEX_SETTLE_MS, now, 3), PEX_TICK_MS, 'never sooner than PEX_TICK_MS')
  assert.equal(nextTickDelayMs(now, now - PEX_SETTLE_MS, now + 60_000, 0), undefined, 'settled and alone: no tick (connected() wakes the timer)')
})
