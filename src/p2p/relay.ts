// Relaying: a child asked for blocks this agent lacks; fetch them through our own store (from our parents,
// one shared fetch per block however many children ask, and our own VM's reads share it too). Each block is
// handed on as soon as it is verified (onProgress wakes the block server), not when the whole request is in.

import type { ServedStore, ServiceComponents } from './components.js'
import { DEFAULT_REQUEST_TIMEOUT_MS } from './peer-source.js'
import { deadline } from '../blockstack/deadline.js'

/**
 * A relayed fetch (for a child) that takes longer is abandoned: the child's request gets 'not present' and the
 * child moves the block to another peer at once. Shorter than the child's own request timeout, so the child
 * hears 'not present' (a failover) rather than timing out (which would mark this parent failed).
 */
export const RELAY_TIMEOUT_MS = Math.round(DEFAULT_REQUEST_TIMEOUT_MS * 2 / 3)

export type RelayFn = (rootHex: string, peerId: string, indexes: number[], priority: 0 | 1, signal: AbortSignal,
  onProgress?: () => void) => Promise<void> | undefined

export const createRelay = () => (components: ServiceComponents): RelayFn => {
  const { byRoot } = components
  return (rootHex, peerId, indexes, priority, signal, onProgress) => {
    const state = byRoot.get(rootHex)
    const store: ServedStore | undefined = state?.store
    if (state === undefined || store?.ensure === undefined || !state.children.has(peerId)) return undefined
    const ensure = store.ensure.bind(store)
    return (async () => {
      const wanted = new Set(indexes)
      const unsubscribe = onProgress === undefined
        ? undefined
        : store.onBlocksAdded?.(added => { if (added.some(index => wanted.has(index))) onProgress() })
      const bound = deadline(signal, RELAY_TIMEOUT_MS, 'relay')
      try {
        // ensure() resolves once every block is verified (has() is true): servable at once.
        await ensure(indexes, { signal: bound.signal, priority: priority === 0 ? 'demand' : 'prefetch' })
      } finally {
        bound.dispose()
        unsubscribe?.()
      }
    })()
  }
}
