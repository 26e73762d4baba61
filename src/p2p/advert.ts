// Gossip adverts: what an agent says about one image, published on the image's gossipsub topic.
//
// Wire form (big-endian), at most MAX_ADVERT_BYTES:
//   version u8 (1) | flags u8 (bit0: manifest available, bit1: depth known) | seq u64 | imageIdLength u8
//   | imageId utf-8 | root 32 | totalBlocks u32 | heldBlocks u32 | depth u8 | childCount u16 | childLimit u16
//   | uploadLoad u16 (1/10000ths) | groupBlocks u32 | summaryLength u16 | summary
//   | addrCount u8 | addrCount x (length u8 | multiaddr bytes)
//   [flag bit2 only: | profileVersion 8 (16 hex digits) | profileBoots u8 | profileBytes u32]
//   [flag bit3 only: | booting u8 (1..255)]
//   (flag bit4, no field: sole-full, the sender takes no more children that would have it as their only parent)
//   | extensions: zero or more of (type u8 | length u8 | value), to the end
//       type 1, length 2: lifetimeS u16 (1..65535), how long the advert stays true without a newer one
// Forward compatibility: flags added later carry no fields of their own, and later fields go in extensions, so a
// decoder ignores flag bits and extension types it does not know. (Agents before the extensions rejected both;
// they cannot share a swarm with agents that send extensions.)
// The lifetime lets a quiet sender keep itself alive less often (advert-policy.ts: the keep-alive interval
// doubles while nothing changes); receivers take it within bounds (src/topology/freshness.ts).
// The summary is 2 bits per group of `groupBlocks` consecutive blocks (at most MAX_SUMMARY_GROUPS groups, so
// at most 256 bytes): 0 none held, 1 under half, 2 half or more, 3 all. It tells a child whether a parent
// probably holds a block; exact presence is asked per request. The sender is the gossip message's signed
// `from` (StrictSign), so it is not repeated here. The addresses (at most MAX_ADVERT_ADDRS) let agents that
// only share a bootstrap peer dial each other: identify tells addresses of connected peers only.
// The profile fields say which boot profile of the image the sender has (src/prefetch: its content version, how
// many boots it merges, its encoded size), so that an agent with an older or no profile fetches it
// (/vmthunder/profile/1) and the first boot anywhere teaches every agent.
// `booting` says how many VMs of the image the sender is booting now (absent: none): peers hold idle prefetch of
// the image back while anyone boots it, and fetch the sender's live read order (src/prefetch: swarm read-ahead).
// It is sent only while the sender boots.

import { validateImageId, type Manifest } from '../blockstack/manifest.js'
import type { Advert } from '../topology/types.js'
import { AdvertDecodeError } from './errors.js'
import { multiaddr } from '@multiformats/multiaddr'

export const ADVERT_VERSION = 1
export const MAX_SUMMARY_GROUPS = 1024
export const MAX_ADVERT_BYTES = 768
export const MAX_ADVERT_ADDRS = 4
export const MAX_ADDR_BYTES = 64
export const MAX_CHILD_LIMIT = 1024
const FIXED_BYTES = 1 + 1 + 8 + 1 + 32 + 4 + 4 + 1 + 2 + 2 + 2 + 4 + 2 + 1
const FLAG_MANIFEST = 1
const FLAG_DEPTH = 2
const FLAG_PROFILE = 4
const FLAG_BOOTING = 8
/** The sender (a relay) refuses agents attaching with it as their only parent (topology/admit.ts). */
const FLAG_SOLE_FULL = 16
const EXTENSION_LIFETIME = 1
const LIFETIME_VALUE_BYTES = 2
/** Longest lifetime the wire carries: u16 seconds. */
const MAX_WIRE_LIFETIME_MS = 65_535_000
/** Boots advertised at most (the field is one byte). */
export const MAX_ADVERTISED_BOOTING = 255
const PROFILE_FIELDS_BYTES = 8 + 1 + 4
/** Largest profile an advert may announce (the profile protocol refuses more too). */
export const MAX_ADVERTISED_PROFILE_BYTES = 1024 * 1024
export const LEVEL_NONE = 0
export const LEVEL_SOME = 1
export const LEVEL_MOST = 2
export const LEVEL_ALL = 3

export function imageTopic (imageId: string): string {
  return `/vmthunder/image/${imageId}/1`
}

/** The image id of an advert topic, or undefined when `topic` is not one. */
export function imageIdFromTopic (topic: string): string | undefined {
  const match = /^\/vmthunder\/image\/([^/]+)\/1$/.exec(topic)
  return match?.[1]
}

export interface HeldSummary {
  groupBlocks: number
  /** 2 bits per group, LSB first. */
  levels: Uint8Array
}

export interface AdvertBody {
  imageId: string
  rootHex: string
  seq: number
  depth: number | null
  heldBlocks: number
  totalBlocks: number
  childCount: number
  childLimit: number
  /** 0..1 */
  uploadLoad: number
  manifestAvailable: boolean
  summary: HeldSummary
  /** The sender's listen addresses (binary multiaddrs, without /p2p). */
  addrs: Uint8Array[]
  /** The sender's boot profile of the image, when it has one. */
  profile?: AdvertisedProfile
  /** VMs of the image the sender is booting now (1..255); absent when none. */
  booting?: number
  /** The sender takes no more children that would have it as their only parent (topology/admit.ts). */
  soleFull?: boolean
  /** How long the advert stays true without a newer one (whole seconds on the wire); absent: the receiver's own timeout. */
  lifetimeMs?: number
}

export interface AdvertisedProfile {
  /** 16 hex digits: the profile's content version. */
  version: string
  /** Boots merged into it (1..255). */
  boots: number
  /** Size of its binary form. */
  sizeBytes: number
}

export function groupBlocksFor (totalBlocks: number): number {
  return Math.max(1, Math.ceil(totalBlocks / MAX_SUMMARY_GROUPS))
}

function groupCount (totalBlocks: number, groupBlocks: number): number {
  return Math.ceil(totalBlocks / groupBlocks)
}

export function levelOf (summary: HeldSummary, group: number): number {
  return (summary.levels[group >> 2] >> ((group & 3) * 2)) & 3
}

/** Builds the summary from a presence bitmap (one bit per block, LSB first). */
export function summarize (bitmap: Uint8Array, totalBlocks: number): HeldSummary {
  const groupBlocks = groupBlocksFor(totalBlocks)
  const groups = groupCount(totalBlocks, groupBlocks)
  const levels = new Uint8Array(Math.ceil(groups / 4))
  for (let g = 0; g < groups; g++) {
    const first = g * groupBlocks
    const last = Math.min(totalBlocks, first + groupBlocks)
    let held = 0
    for (let i = first; i < last; i++) if ((bitmap[i >> 3] & (1 << (i & 7))) !== 0) held++
    const size = last - first
    const level = held === 0 ? LEVEL_NONE : held === size ? LEVEL_ALL : held * 2 >= size ? LEVEL_MOST : LEVEL_SOME
    levels[g >> 2] |= level << ((g & 3) * 2)
  }
  return { groupBlocks, levels }
}

/** How likely the advertiser holds `blockIndex`, from its summary: 1, 0.75, 0.25 or 0. */
export function holdProbability (advert: Pick<AdvertBody, 'summary' | 'heldBlocks' | 'totalBlocks'>, blockIndex: number): number {
  if (advert.heldBlocks === advert.totalBlocks) return 1
  if (blockIndex < 0 || blockIndex >= advert.totalBlocks) return 0
  const level = levelOf(advert.summary, Math.floor(blockIndex / advert.summary.groupBlocks))
  return level === LEVEL_ALL ? 1 : level === LEVEL_MOST ? 0.75 : level === LEVEL_SOME ? 0.25 : 0
}

export function encodeAdvert (advert: AdvertBody): Uint8Array {
  const id = Buffer.from(advert.imageId, 'utf8')
  const root = Buffer.from(advert.rootHex, 'hex')
  if (root.length !== 32) throw new RangeError('advert root must be 32 bytes (64 hex digits)')
  const addrs = advert.addrs.slice(0, MAX_ADVERT_ADDRS).filter(addr => addr.byteLength > 0 && addr.byteLength <= MAX_ADDR_BYTES)
  let addrBytes = 0
  for (const addr of addrs) addrBytes += 1 + addr.byteLength
  const profile = advert.profile
  if (profile !== undefined && (!/^[0-9a-f]{16}$/.test(profile.version) || !Number.isInteger(profile.boots) || profile.boots < 1 ||
    !Number.isInteger(profile.sizeBytes) || profile.sizeBytes < 1 || profile.sizeBytes > MAX_ADVERTISED_PROFILE_BYTES)) {
    throw new RangeError('advert profile needs a 16-hex-digit version, boots >= 1 and 1..1 MiB of size')
  }
  const booting = advert.booting ?? 0
  if (!Number.isInteger(booting) || booting < 0) throw new RangeError('advert booting must be a whole number >= 0')
  const lifetimeS = advert.lifetimeMs === undefined ? 0 : Math.ceil(advert.lifetimeMs / 1000)
  if (!Number.isInteger(lifetimeS) || lifetimeS < 0 || lifetimeS > MAX_WIRE_LIFETIME_MS / 1000) throw new RangeError(`advert lifetime must be 0..${MAX_WIRE_LIFETIME_MS} ms`)
  const out = Buffer.alloc(FIXED_BYTES + id.length + advert.summary.levels.byteLength + addrBytes + (profile !== undefined ? PROFILE_FIELDS_BYTES : 0) + (booting > 0 ? 1 : 0) +
    (lifetimeS > 0 ? 2 + LIFETIME_VALUE_BYTES : 0))
  if (out.length > MAX_ADVERT_BYTES) throw new RangeError(`advert of ${out.length} bytes exceeds ${MAX_ADVERT_BYTES}`)
  let at = out.writeUInt8(ADVERT_VERSION, 0)
  at = out.writeUInt8((advert.manifestAvailable ? FLAG_MANIFEST : 0) | (advert.depth !== null ? FLAG_DEPTH : 0) | (profile !== undefined ? FLAG_PROFILE : 0) | (booting > 0 ? FLAG_BOOTING : 0) | (advert.soleFull === true ? FLAG_SOLE_FULL : 0), at)
  at = out.writeBigUInt64BE(BigInt(advert.seq), at)
  at = out.writeUInt8(id.length, at)
  at += id.copy(out, at)
  at += root.copy(out, at)
  at = out.writeUInt32BE(advert.totalBlocks, at)
  at = out.writeUInt32BE(advert.heldBlocks, at)
  at = out.writeUInt8(advert.depth ?? 0, at)
  at = out.writeUInt16BE(advert.childCount, at)
  at = out.writeUInt16BE(advert.childLimit, at)
  at = out.writeUInt16BE(Math.round(Math.min(1, Math.max(0, advert.uploadLoad)) * 10_000), at)
  at = out.writeUInt32BE(advert.summary.groupBlocks, at)
  at = out.writeUInt16BE(advert.summary.levels.byteLength, at)
  at += Buffer.from(advert.summary.levels).copy(out, at)
  at = out.writeUInt8(addrs.length, at)
  for (const addr of addrs) {
    at = out.writeUInt8(addr.byteLength, at)
    at += Buffer.from(addr).copy(out, at)
  }
  if (profile !== undefined) {
    at += Buffer.from(profile.version, 'hex').copy(out, at)
    at = out.writeUInt8(Math.min(255, profile.boots), at)
    at = out.writeUInt32BE(profile.sizeBytes, at)
  }
  if (booting > 0) at = out.writeUInt8(Math.min(MAX_ADVERTISED_BOOTING, booting), at)
  if (lifetimeS > 0) {
    at = out.writeUInt8(EXTENSION_LIFETIME, at)
    at = out.writeUInt8(LIFETIME_VALUE_BYTES, at)
    at = out.writeUInt16BE(lifetimeS, at)
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.length)
}

/**
 * Decodes an advert and checks that it is well formed and consistent in itself (throws AdvertDecodeError).
 * Whether it fits what this agent knows (the manifest, the sender's last seq) is validateAdvert's job.
 */
export function decodeAdvert (bytes: Uint8Array): AdvertBody {
  const fail = (why: string): never => { throw new AdvertDecodeError(`bad advert: ${why}`) }
  if (bytes.byteLength > MAX_ADVERT_BYTES) fail(`${bytes.byteLength} bytes, over ${MAX_ADVERT_BYTES}`)
  if (bytes.byteLength < FIXED_BYTES) fail('truncated')
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (buf.readUInt8(0) !== ADVERT_VERSION) fail(`unsupported version ${buf.readUInt8(0)}`)
  // Flag bits this version does not know are ignored (see the wire form: later flags carry no fields).
  const flags = buf.readUInt8(1)
  const seqBig = buf.readBigUInt64BE(2)
  if (seqBig === 0n || seqBig > BigInt(Number.MAX_SAFE_INTEGER)) fail('seq out of range')
  const idLength = buf.readUInt8(10)
  if (buf.length < FIXED_BYTES + idLength) fail('truncated image id')
  const imageId = buf.toString('utf8', 11, 11 + idLength)
  try { validateImageId(imageId) } catch { fail('bad image id') }
  let at = 11 + idLength
  const rootHex = buf.toString('hex', at, at + 32)
  at += 32
  const totalBlocks = buf.readUInt32BE(at); at += 4
  const heldBlocks = buf.readUInt32BE(at); at += 4
  const depthByte = buf.readUInt8(at); at += 1
  const childCount = buf.readUInt16BE(at); at += 2
  const childLimit = buf.readUInt16BE(at); at += 2
  const load = buf.readUInt16BE(at); at += 2
  const groupBlocks = buf.readUInt32BE(at); at += 4
  const summaryLength = buf.readUInt16BE(at); at += 2
  if (buf.length < at + summaryLength + 1) fail(`truncated summary (${summaryLength} bytes)`)
  const summaryAt = at
  at += summaryLength
  const addrCount = buf.readUInt8(at); at += 1
  if (addrCount > MAX_ADVERT_ADDRS) fail(`${addrCount} addresses, over ${MAX_ADVERT_ADDRS}`)
  const addrs: Uint8Array[] = []
  for (let i = 0; i < addrCount; i++) {
    if (at >= buf.length) fail('truncated addresses')
    const length = buf.readUInt8(at); at += 1
    if (length === 0 || length > MAX_ADDR_BYTES || at + length > buf.length) fail('bad address length')
    const addr = new Uint8Array(buf.subarray(at, at + length))
    try { multiaddr(addr) } catch { fail('address is not a multiaddr') }
    addrs.push(addr)
    at += length
  }
  let profile: AdvertisedProfile | undefined
  if ((flags & FLAG_PROFILE) !== 0) {
    if (at + PROFILE_FIELDS_BYTES > buf.length) fail('truncated profile fields')
    const version = buf.toString('hex', at, at + 8)
    const boots = buf.readUInt8(at + 8)
    const sizeBytes = buf.readUInt32BE(at + 9)
    at += PROFILE_FIELDS_BYTES
    if (boots === 0) fail('profile of no boots')
    if (sizeBytes === 0 || sizeBytes > MAX_ADVERTISED_PROFILE_BYTES) fail(`profile size ${sizeBytes} out of range`)
    profile = { version, boots, sizeBytes }
  }
  let booting: number | undefined
  if ((flags & FLAG_BOOTING) !== 0) {
    if (at + 1 > buf.length) fail('truncated booting field')
    booting = buf.readUInt8(at)
    at += 1
    if (booting === 0) fail('booting flag with no boots')
  }
  // Extensions, to the end: known types checked, others skipped (a later agent's fields).
  let lifetimeMs: number | undefined
  while (at < buf.length) {
    if (at + 2 > buf.length) fail('truncated extension header')
    const type = buf.readUInt8(at)
    const length = buf.readUInt8(at + 1)
    at += 2
    if (at + length > buf.length) fail(`truncated extension ${type}`)
    if (type === EXTENSION_LIFETIME) {
      if (lifetimeMs !== undefined) fail('two lifetimes')
      if (length !== LIFETIME_VALUE_BYTES) fail(`lifetime of ${length} bytes`)
      const lifetimeS = buf.readUInt16BE(at)
      if (lifetimeS === 0) fail('lifetime of 0 s')
      lifetimeMs = lifetimeS * 1000
    }
    at += length
  }
  if (totalBlocks === 0) fail('no blocks')
  if (heldBlocks > totalBlocks) fail('holds more blocks than the image has')
  const depth = (flags & FLAG_DEPTH) !== 0 ? depthByte : null
  if (depth === null && depthByte !== 0) fail('depth byte set without the depth flag')
  if (depth === 0 && heldBlocks !== totalBlocks) fail('depth 0 (seed) without every block')
  if (childLimit > MAX_CHILD_LIMIT || childCount > childLimit) fail('child count over the limit')
  if (load > 10_000) fail('upload load over 1')
  if (groupBlocks !== groupBlocksFor(totalBlocks)) fail('summary group size does not match the block count')
  const groups = groupCount(totalBlocks, groupBlocks)
  if (summaryLength !== Math.ceil(groups / 4)) fail('summary length does not match the block count')
  const levels = new Uint8Array(buf.subarray(summaryAt, summaryAt + summaryLength))
  const summary = { groupBlocks, levels }
  // The summary must agree with heldBlocks: at least the 'all' groups, at most everything but 'none' groups.
  let minHeld = 0
  let maxHeld = 0
  for (let g = 0; g < groups; g++) {
    const size = Math.min(totalBlocks, (g + 1) * groupBlocks) - g * groupBlocks
    const level = levelOf(summary, g)
    if (level === LEVEL_ALL) { minHeld += size; maxHeld += size } else if (level === LEVEL_MOST) {
      minHeld += Math.ceil(size / 2); maxHeld += size - 1
    } else if (level === LEVEL_SOME) { minHeld += 1; maxHeld += Math.ceil(size / 2) - 1 }
  }
  const padBits = summaryLength * 4 - groups
  if (padBits > 0 && (levels[summaryLength - 1] >> ((4 - padBits) * 2)) !== 0) fail('summary padding is not zero')
  if (heldBlocks < minHeld || heldBlocks > maxHeld) fail(`summary says ${minHeld}..${maxHeld} blocks held, advert says ${heldBlocks}`)
  return {
    imageId,
    rootHex,
    seq: Number(seqBig),
    depth,
    heldBlocks,
    totalBlocks,
    childCount,
    childLimit,
    uploadLoad: load / 10_000,
    manifestAvailable: (flags & FLAG_MANIFEST) !== 0,
    summary,
    addrs,
    ...(profile !== undefined ? { profile } : {}),
    ...(booting !== undefined ? { booting } : {}),
    ...((flags & FLAG_SOLE_FULL) !== 0 ? { soleFull: true } : {}),
    ...(lifetimeMs !== undefined ? { lifetimeMs } : {})
  }
}

/**
 * 'reject': malformed or inconsistent (the sender's gossipsub score pays). 'stale': an older or equal seq than
 * one already seen from the sender; ignored without penalty, because gossipsub's lazy gossip (IHAVE/IWANT)
 * legitimately delivers older messages after newer ones, and the forwarder did nothing wrong.
 */
export type AdvertVerdict = { ok: true, advert: AdvertBody } | { ok: false, reason: string, stale?: boolean }

export interface AdvertContext {
  /** The image id of the topic the advert came on. */
  topicImageId: string
  /** The manifest this agent has accepted for the image, when it has one. */
  manifest?: Pick<Manifest, 'rootHex' | 'blockCount'>
  /** The highest seq seen from this sender for this image. */
  lastSeq?: number
}

/** Decodes and checks an advert against what this agent knows: the topic, the manifest, the sender's seq. */
export function validateAdvert (bytes: Uint8Array, context: AdvertContext): AdvertVerdict {
  let advert: AdvertBody
  try {
    advert = decodeAdvert(bytes)
  } catch (err) {
    return { ok: false, reason: (err as Error).message }
  }
  if (advert.imageId !== context.topicImageId) return { ok: false, reason: `advert for ${advert.imageId} on the topic of ${context.topicImageId}` }
  if (context.manifest !== undefined) {
    if (advert.rootHex !== context.manifest.rootHex) return { ok: false, reason: 'manifest root differs from the known manifest' }
    if (advert.totalBlocks !== context.manifest.blockCount) return { ok: false, reason: 'block count differs from the known manifest' }
  }
  if (context.lastSeq !== undefined && advert.seq <= context.lastSeq) return { ok: false, stale: true, reason: `stale seq ${advert.seq} <= ${context.lastSeq}` }
  return { ok: true, advert }
}

/** The topology module's view of an advert. */
export function toTopologyAdvert (advert: AdvertBody, peerId: string): Advert {
  return {
    peerId,
    imageId: advert.imageId,
    rootHex: advert.rootHex,
    seq: advert.seq,
    depth: advert.depth,
    heldBlocks: advert.heldBlocks,
    totalBlocks: advert.totalBlocks,
    childCount: advert.childCount,
    childLimit: advert.childLimit,
    uploadLoad: advert.uploadLoad,
    ...(advert.soleFull === true ? { soleFull: true } : {})
  }
}
