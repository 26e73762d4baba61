// The parent side of the tree: which peers are our children for an image (admission with bounded fan-out and
// a bound on children that have us as their only parent, topology/admit.ts; leases renewed every heartbeat,
// slots freed when a child leaves or disconnects).

import { admitChild } from '../topology/index.js'
import type { AdmitReply } from './block-server.js'
import { isSeed, type ImageState, type ServiceComponents } from './components.js'

/**
 * A child's lease lasts this many heartbeats without renewal (or a request from it), and at least
 * MIN_CHILD_LEASE_MS. A child that leaves says so and one that disconnects is forgotten at once, so the lease
 * only frees the slot of a hung child; the floor keeps a live child whose heartbeat a loaded host delayed (with
 * 1.5 s, the origin's only slot changed hands and each new child read the image from the origin again).
 */
export const CHILD_LEASE_HEARTBEATS = 3
export const MIN_CHILD_LEASE_MS = 5000

export interface ChildrenInit {
  /** Our advert's child count changed. */
  publishSoon: (state: ImageState) => void
}

export interface Children {
  /** Live children (expired leases and banned peers dropped). */
  live: (state: ImageState) => string[]
  limitOf: (state: ImageState) => number
  /** A relay at its bound of sole children (topology/admit.ts): its advert says so. */
  soleFull: (state: ImageState) => boolean
  isChild: (state: ImageState, peerId: string) => boolean
  /**
   * Admission (or renewal, or leave) asked by a peer over the block protocol; `asked`: the parents it has,
   * counting us, and whether it attaches from nothing (absent, as from an older agent: one parent, not attaching).
   * Undefined: unknown image.
   */
  admit: (peerId: string, rootHex: string, leave: boolean, asked?: { parentCount: number, attaching: boolean }) => AdmitReply | undefined
  /** The peer is gone: its slots are free now. */
  forget: (peerId: string) => void
  /** A child asked us for blocks: it is alive, so its lease runs on (a renewal delayed on a loaded host does not end it). */
  touch: (peerId: string, rootHex: string) => void
}

export const createChildren = (init: ChildrenInit) => (components: ServiceComponents): Children => {
  const { clock, params, byRoot, images, peers } = components

  const leaseMs = (): number => Math.max(CHILD_LEASE_HEARTBEATS * params.heartbeatMs, MIN_CHILD_LEASE_MS)
  const limitOf = (state: ImageState): number => state.childLimit ?? params.childLimit

  const live = (state: ImageState): string[] => {
    const now = clock.nowMs()
    for (const [peer, expiry] of state.children) {
      if (expiry <= now || peers.isBanned(peer)) { state.children.delete(peer); state.childParentCounts.delete(peer) }
    }
    return [...state.children.keys()]
  }

  /** Live children with us as their only parent (`except` not counted). */
  const soleChildrenOf = (state: ImageState, children: readonly string[], except?: string): number => {
    let n = 0
    for (const peer of children) if (peer !== except && (state.childParentCounts.get(peer) ?? 1) === 1) n++
    return n
  }

  const soleFull = (state: ImageState): boolean => {
    const limit = params.soleChildLimit ?? 0
    return limit > 0 && !isSeed(state) && soleChildrenOf(state, live(state)) >= limit
  }

  const admit = (peerId: string, rootHex: string, leave: boolean, asked?: { parentCount: number, attaching: boolean }): AdmitReply | undefined => {
    const state = byRoot.get(rootHex)
    if (state === undefined || state.store === undefined) return undefined
    if (leave) {
      state.children.delete(peerId)
      state.childParentCounts.delete(peerId)
      init.publishSoon(state)
      return { accepted: false, childCount: live(state).length, childLimit: limitOf(state) }
    }
    const children = live(state)
    const isAlreadyChild = state.children.has(peerId)
    const result = admitChild({
      childCount: children.length,
      childLimit: limitOf(state),
      isAlreadyChild,
      isExcluded: peers.isBanned(peerId),
      selfDepth: isSeed(state) ? 0 : state.depth,
      soleChildren: soleChildrenOf(state, children, peerId),
      attaching: asked?.attaching === true,
      soleChildLimit: params.soleChildLimit ?? 0
    })
    if (result.admit) {
      state.children.set(peerId, clock.nowMs() + leaseMs())
      // A renewal updates the count: the child may have gained or lost parents since.
      state.childParentCounts.set(peerId, asked?.parentCount ?? 1)
      if (!isAlreadyChild) init.publishSoon(state)
    }
    return { accepted: result.admit, childCount: live(state).length, childLimit: limitOf(state) }
  }

  const forget = (peerId: string): void => {
    for (const state of images.values()) {
      // A child that is gone frees its slot now, not when its lease runs out: with the origin's single slot,
      // the orphans need it within the heartbeat.
      state.childParentCounts.delete(peerId)
      if (state.children.delete(peerId)) init.publishSoon(state)
    }
  }

  const touch = (peerId: string, rootHex: string): void => {
    const state = byRoot.get(rootHex)
    const expiry = state?.children.get(peerId)
    const now = clock.nowMs()
    if (state === undefined || expiry === undefined || expiry <= now) return
    state.children.set(peerId, now + leaseMs())
  }

  return { live, limitOf, soleFull, isChild: (state, peerId) => state.children.has(peerId), admit, forget, touch }
}
