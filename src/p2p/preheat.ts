// Cluster preheat without a master. An agent publishes a signed request "pull image ID (root R)" on its own
// gossip topic; every agent that trusts the signer fetches the manifest from peers and attaches the image,
// after which its idle prefetcher pulls the blocks at spare bandwidth, within the cache quota, from its
// parents in the tree (the origin serves few children: peers come before the origin). Each working agent
// reports its progress on the same topic, which is what `vmthunderctl image preheat --wait` shows.
//
// Messages are JSON envelopes {b: BODY_JSON, s: SIGNATURE_HEX}: an Ed25519 signature by the agent's identity
// key over BODY_JSON, so the request is checked whoever relays it. Bounded: message size, request age, the
// number of requests tracked and running, the number of agents' reports kept. Idempotent: a request for an
// (image, root) already seen is ignored, so re-issuing it or gossip duplicates cost nothing.

import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import { signEd25519, verifyEd25519, type SigningKey } from '../blockstack/signing.js'
import type { PreheatClusterStatus, PreheatRequest, PreheatStatus } from '../rpc/types.js'

export const PREHEAT_TOPIC = '/vmthunder/preheat/1'
export const MAX_MESSAGE_BYTES = 2048
/** Requests older (or further in the future) than this are replays or clock trouble: ignored. */
export const MAX_REQUEST_AGE_MS = 10 * 60_000
export const MAX_TRACKED_REQUESTS = 64
export const MAX_CONCURRENT_PULLS = 2
export const MAX_REPORTED_AGENTS = 1024
export const DEFAULT_REPORT_INTERVAL_MS = 2000
/** Fetching a manifest for a preheat: the requester answers within this; a receiving agent gives up after it. */
export const REQUEST_MANIFEST_TIMEOUT_MS = 20_000
export const PULL_MANIFEST_TIMEOUT_MS = 300_000
/** A finished agent keeps reporting 'done' this many intervals, for late watchers. */
const DONE_REPORTS = 5

export class PreheatUntrustedError extends Error {
  override name = 'PreheatUntrustedError'
}

export class PreheatRootMismatchError extends Error {
  override name = 'PreheatRootMismatchError'
}

export class PreheatImageUnavailableError extends Error {
  override name = 'PreheatImageUnavailableError'
}

export class PreheatNotStartedError extends Error {
  override name = 'PreheatNotStartedError'
}

/** The narrow part of gossipsub this module uses. */
export interface PreheatPubsub {
  subscribe: (topic: string) => void
  unsubscribe: (topic: string) => void
  publish: (topic: string, data: Uint8Array) => Promise<unknown>
  getSubscribers: (topic: string) => PeerId[]
  topicValidators: Map<string, (from: PeerId, message: any) => TopicValidatorResult | Promise<TopicValidatorResult>>
  addEventListener: (type: 'message', handler: (event: CustomEvent<{ topic: string, data: Uint8Array }>) => void) => void
  removeEventListener: (type: 'message', handler: (event: CustomEvent<{ topic: string, data: Uint8Array }>) => void) => void
}

/** An image as this agent holds it. */
export interface PreheatImage {
  rootHex: string
  sizeBytes: number
  heldFraction: () => number
}

export interface PreheatInit {
  pubsub: () => PreheatPubsub
  identity: SigningKey & { peerId: string }
  /** Keys whose requests this agent acts on (its own and the operator's p2p.trust). */
  trustedKeys: Uint8Array[]
  /** The image on this host, fetching its manifest from peers and attaching it (prefetch pulls it) if new. */
  acquire: (imageId: string, signal: AbortSignal) => Promise<PreheatImage>
  logger: { info: (m: string, f?: Record<string, unknown>) => void, warn: (m: string, f?: Record<string, unknown>) => void }
  nowMs?: () => number
  reportIntervalMs?: number
}

interface RequestBody { v: 1, kind: 'request', imageId: string, root: string, signer: string, issuedAtMs: number }
interface ProgressBody { v: 1, kind: 'progress', imageId: string, root: string, signer: string, peerId: string, state: PreheatStatus['state'], heldFraction: number, sizeBytes: number, atMs: number }
type Body = RequestBody | ProgressBody

interface Tracked {
  imageId: string
  root: string
  state: PreheatStatus['state']
  error?: string
  image?: PreheatImage
  doneReports: number
}

const HEX64 = /^[0-9a-f]{64}$/
const STATES = new Set(['queued', 'manifest', 'pulling', 'done', 'failed', 'refused'])
/** Finished states: nothing more will happen here for that request. */
const SETTLED = new Set(['done', 'failed', 'refused'])

function encode (body: Body, key: SigningKey): Uint8Array {
  const b = JSON.stringify(body)
  const s = Buffer.from(signEd25519(key, Buffer.from(b))).toString('hex')
  return Buffer.from(JSON.stringify({ b, s }))
}

/** The body if the envelope is well formed and its signature checks out; undefined otherwise. */
export function decodePreheatMessage (data: Uint8Array, nowMs: number): Body | undefined {
  if (data.byteLength > MAX_MESSAGE_BYTES) return undefined
  let envelope: { b?: unknown, s?: unknown }
  let body: Record<string, unknown>
  try {
    envelope = JSON.parse(Buffer.from(data).toString('utf8'))
    if (typeof envelope.b !== 'string' || typeof envelope.s !== 'string' || !/^[0-9a-f]{128}$/.test(envelope.s)) return undefined
    body = JSON.parse(envelope.b)
  } catch {
    return undefined
  }
  if (body === null || typeof body !== 'object' || body.v !== 1) return undefined
  if (typeof body.imageId !== 'string' || body.imageId.length < 1 || body.imageId.length > 64) return undefined
  if (typeof body.root !== 'string' || !HEX64.test(body.root) || typeof body.signer !== 'string' || !HEX64.test(body.signer)) return undefined
  const at = body.kind === 'request' ? body.issuedAtMs : body.atMs
  if (typeof at !== 'number' || Math.abs(nowMs - at) > MAX_REQUEST_AGE_MS) return undefined
  if (body.kind === 'progress') {
    if (typeof body.peerId !== 'string' || body.peerId.length > 128 || !STATES.has(body.state as string)) return undefined
    if (typeof body.heldFraction !== 'number' || !(body.heldFraction >= 0 && body.heldFraction <= 1)) return undefined
    if (typeof body.sizeBytes !== 'number' || !(body.sizeBytes >= 0)) return undefined
  } else if (body.kind !== 'request') {
    return undefined
  }
  if (!verifyEd25519(Buffer.from(body.signer, 'hex'), Buffer.from(envelope.b), Buffer.from(envelope.s, 'hex'))) return undefined
  return body as unknown as Body
}

export interface Preheat {
  start: () => void
  stop: () => Promise<void>
  /** Signs and publishes a request for an image this agent holds or can fetch, and works on it here too. */
  request: (imageId: string, signal: AbortSignal) => Promise<PreheatRequest>
  /** The cluster's progress on an image from the agents' reports (this agent's own included). */
  clusterStatus: (imageId: string) => PreheatClusterStatus
  /** This agent's own preheat work. */
  local: () => PreheatStatus[]
}

export function createPreheat (init: PreheatInit): Preheat {
  const now = init.nowMs ?? (() => Date.now())
  const signer = Buffer.from(init.identity.publicKey).toString('hex')
  const trusted = new Set(init.trustedKeys.map(k => Buffer.from(k).toString('hex')))
  const tracked = new Map<string, Tracked>()
  const reports = new Map<string, Map<string, ProgressBody>>()
  const queue: Tracked[] = []
  const stopController = new AbortController()
  let running = 0
  let timer: NodeJS.Timeout | undefined
  let started = false

  const keyOf = (imageId: string, root: string): string => `${imageId}\0${root}`

  const publish = (body: Body): void => {
    init.pubsub().publish(PREHEAT_TOPIC, encode(body, init.identity)).catch((err: Error) => {
      init.logger.warn('preheat publish failed', { error: err })
    })
  }

  const progressOf = (t: Tracked): ProgressBody => ({
    v: 1,
    kind: 'progress',
    imageId: t.imageId,
    root: t.root,
    signer,
    peerId: init.identity.peerId,
    state: t.state,
    heldFraction: t.image?.heldFraction() ?? 0,
    sizeBytes: t.image?.sizeBytes ?? 0,
    atMs: now()
  })

  const noteReport = (body: ProgressBody): void => {
    let agents = reports.get(body.imageId)
    if (agents === undefined) {
      if (reports.size >= MAX_TRACKED_REQUESTS) return
      reports.set(body.imageId, agents = new Map())
    }
    if (!agents.has(body.peerId) && agents.size >= MAX_REPORTED_AGENTS) return
    const previous = agents.get(body.peerId)
    if (previous !== undefined && previous.atMs > body.atMs) return
    agents.set(body.peerId, body)
  }

  const report = (t: Tracked): void => {
    if (t.state === 'done' && t.image !== undefined && t.image.heldFraction() < 1) t.state = 'pulling'
    if (t.state === 'pulling' && t.image !== undefined && t.image.heldFraction() >= 1) t.state = 'done'
    const body = progressOf(t)
    noteReport(body)
    publish(body)
  }

  const pump = (): void => {
    while (running < MAX_CONCURRENT_PULLS && queue.length > 0) {
      const t = queue.shift()!
      running++
      t.state = 'manifest'
      init.acquire(t.imageId, AbortSignal.any([stopController.signal, AbortSignal.timeout(PULL_MANIFEST_TIMEOUT_MS)])).then(image => {
        if (image.rootHex !== t.root) throw new PreheatRootMismatchError(`this cluster's image '${t.imageId}' has root ${image.rootHex.slice(0, 16)}, the request ${t.root.slice(0, 16)}`)
        t.image = image
        t.state = image.heldFraction() >= 1 ? 'done' : 'pulling'
        init.logger.info('preheat: pulling image in the background', { imageId: t.imageId, heldFraction: image.heldFraction() })
      }).catch((err: Error) => {
        t.state = 'failed'
        t.error = `${err.name}: ${err.message}`
        init.logger.warn('preheat failed', { imageId: t.imageId, error: err })
      }).finally(() => {
        running--
        report(t)
        if (!stopController.signal.aborted) pump()
      })
    }
  }

  /**
   * Takes on a request (from a peer or this agent); false when it is a duplicate or over the bounds. An
   * untrusted one is only recorded as refused, and reported, so that the requester sees who said no.
   */
  const accept = (imageId: string, root: string, trustedSigner: boolean): boolean => {
    const key = keyOf(imageId, root)
    const known = tracked.get(key)
    if (known !== undefined && (known.state !== 'failed' && known.state !== 'refused')) return false
    if (known !== undefined && known.state === 'refused' && !trustedSigner) return false
    if (known === undefined && tracked.size >= MAX_TRACKED_REQUESTS) {
      // Forget the oldest finished one; refuse when all are still at work.
      const finished = [...tracked].find(([, t]) => SETTLED.has(t.state))
      if (finished === undefined) return false
      tracked.delete(finished[0])
    }
    const t: Tracked = { imageId, root, state: trustedSigner ? 'queued' : 'refused', doneReports: 0 }
    if (!trustedSigner) t.error = 'this agent does not trust the signer'
    tracked.set(key, t)
    reportPeriodically()
    if (trustedSigner) {
      queue.push(t)
      pump()
    } else {
      report(t)
    }
    return true
  }

  const validator = (_from: PeerId, message: { data: Uint8Array }): TopicValidatorResult => {
    const body = decodePreheatMessage(message.data, now())
    // Well-formed, signed and fresh messages travel on, trusted or not: each agent decides for itself.
    return body === undefined ? TopicValidatorResult.Reject : TopicValidatorResult.Accept
  }

  const onMessage = (event: CustomEvent<{ topic: string, data: Uint8Array }>): void => {
    if (event.detail.topic !== PREHEAT_TOPIC) return
    const body = decodePreheatMessage(event.detail.data, now())
    if (body === undefined) return
    if (body.kind === 'progress') { noteReport(body); return }
    const trustedSigner = trusted.has(body.signer)
    if (!accept(body.imageId, body.root, trustedSigner)) return
    if (trustedSigner) init.logger.info('preheat requested', { imageId: body.imageId, signer: body.signer.slice(0, 16) })
    else init.logger.info('preheat request from an untrusted signer refused', { imageId: body.imageId, signer: body.signer.slice(0, 16) })
  }

  const tick = (): void => {
    let reporting = false
    for (const t of tracked.values()) {
      if (SETTLED.has(t.state) && t.doneReports >= DONE_REPORTS) continue
      reporting = true
      if (t.state === 'queued' || t.state === 'manifest') continue
      report(t)
      if (SETTLED.has(t.state)) t.doneReports++
    }
    // Nothing left to report: the timer stops until the next request (an idle agent has no timer here).
    if (!reporting && timer !== undefined) { clearInterval(timer); timer = undefined }
  }
  const reportPeriodically = (): void => {
    if (!started || timer !== undefined) return
    timer = setInterval(tick, init.reportIntervalMs ?? DEFAULT_REPORT_INTERVAL_MS)
    timer.unref()
  }

  return {
    start () {
      const pubsub = init.pubsub()
      pubsub.topicValidators.set(PREHEAT_TOPIC, validator)
      pubsub.addEventListener('message', onMessage)
      pubsub.subscribe(PREHEAT_TOPIC)
      started = true
      if (tracked.size > 0) reportPeriodically()
    },
    async stop () {
      if (!started) return
      started = false
      clearInterval(timer)
      timer = undefined
      stopController.abort(new Error('preheat stopped'))
      queue.length = 0
      try {
        const pubsub = init.pubsub()
        pubsub.removeEventListener('message', onMessage)
        pubsub.unsubscribe(PREHEAT_TOPIC)
        pubsub.topicValidators.delete(PREHEAT_TOPIC)
      } catch {
        // The node is already stopped: nothing to undo.
      }
    },
    async request (imageId, signal) {
      if (!started) throw new PreheatNotStartedError('preheat needs the peer layer: it is off')
      const timeout = AbortSignal.timeout(REQUEST_MANIFEST_TIMEOUT_MS)
      let image: PreheatImage
      try {
        image = await init.acquire(imageId, AbortSignal.any([signal, stopController.signal, timeout]))
      } catch (err) {
        if (timeout.aborted && !signal.aborted) throw new PreheatImageUnavailableError(`image '${imageId}' is not on this agent and no peer supplied its manifest in ${REQUEST_MANIFEST_TIMEOUT_MS / 1000} s`)
        throw err
      }
      const body: RequestBody = { v: 1, kind: 'request', imageId, root: image.rootHex, signer, issuedAtMs: now() }
      const subscribers = init.pubsub().getSubscribers(PREHEAT_TOPIC).length
      publish(body)
      // This agent works on its own request too (gossip does not deliver our own messages back).
      const key = keyOf(imageId, image.rootHex)
      accept(imageId, image.rootHex, true)
      const t = tracked.get(key)
      if (t !== undefined) report(t)
      return { imageId, root: image.rootHex, signer, issuedAtMs: body.issuedAtMs, subscribers }
    },
    clusterStatus (imageId) {
      const agents = [...(reports.get(imageId)?.values() ?? [])]
      const root = agents.at(-1)?.root ?? [...tracked.values()].find(t => t.imageId === imageId)?.root ?? null
      const sizeBytes = agents.find(a => a.sizeBytes > 0)?.sizeBytes ?? null
      const list = agents.map(a => ({ peerId: a.peerId, state: a.state, heldFraction: a.heldFraction, reportedAtMs: a.atMs }))
      // Agents that refused will never pull: the progress is that of the others.
      const pulling = list.filter(a => a.state !== 'refused')
      const heldFraction = pulling.length === 0 ? 0 : pulling.reduce((sum, a) => sum + a.heldFraction, 0) / pulling.length
      return { imageId, root, agents: list, heldFraction, sizeBytes }
    },
    local () {
      return [...tracked.values()].map(t => ({
        imageId: t.imageId,
        root: t.root,
        state: t.state,
        heldFraction: t.image?.heldFraction() ?? 0,
        ...(t.error === undefined ? {} : { error: t.error })
      }))
    }
  }
}
