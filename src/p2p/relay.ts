// Relaying: a child asked for blocks this agent lacks; fetch them through our own store (from our parents,
// one shared fetch per block however many children ask), then the block server sends them.

import type { BlockCache } from '../blockstack/cache.js'
import type { ServedStore, ServiceComponents } from './components.js'

/** A relayed fetch (for a child) that takes longer is abandoned: the child's request gets 'not present'. */
const RELAY_TIMEOUT_MS = 20_000

export type RelayFn = (rootHex: string, peerId: string, indexes: number[], priority: 0 | 1, signal: AbortSignal) => Promise<void> | undefined

export const createRelay = () => (components: ServiceComponents): RelayFn => {
  const { byRoot, events } = components
  return (rootHex, peerId, indexes, priority, signal) => {
    const state = byRoot.get(rootHex)
    const store = state?.store as (ServedStore & Partial<Pick<BlockCache, 'ensure'>>) | undefined
    if (state === undefined || store === undefined || typeof store.ensure !== 'function' || !state.children.has(peerId)) return undefined
    const ensure = store.ensure.bind(store)
    return (async () => {
      const bounded = AbortSignal.any([signal, AbortSignal.timeout(RELAY_TIMEOUT_MS)])
      await ensure(indexes, { signal: bounded, priority: priority === 0 ? 'demand' : 'prefetch' })
      // Served only once durable (has()): the cache marks blocks present after its group commit.
      await events.waitFor(() => indexes.every(index => store.has(index)), bounded)
    })()
  }
}
