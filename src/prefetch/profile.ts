// Boot profiles: which blocks of an image a boot reads, in likely read order, with a confidence per block.
//
// Binary form (version 1), varints are unsigned LEB128, "z" varints zig-zag signed:
//   magic "VTPF" | format u8 (1) | imageIdLength varint | imageId utf-8 | rootHexLength varint | rootHex ascii
//   | blockSizeBytes varint | blockCount varint | boots varint | entryCount varint | runCount varint
//   | runCount x ( z(startBlock - previous run's end) | runLength-1 | z(tMs - previous run's tMs) | confidence u8 )
// A run is a stretch of entries, consecutive in profile order, with consecutive block indexes, the same tMs and
// the same confidence (one read of many blocks is one run), so a 1,000-read boot encodes to a few KB.
// Times are whole milliseconds; confidence is quantized to 1/255 (a performance hint needs no more).
// `version` is a content hash of the binary form: equal content gives the same version on every agent.
//
// Decoding is strict and bounded: at most MAX_PROFILE_BYTES in, at most min(blockCount, maxEntries) entries
// out, every block in range and listed once, no trailing bytes; anything else throws ProfileDecodeError.

import { createHash } from 'node:crypto'
import { ProfileDecodeError, ProfileMismatchError } from './errors.js'
import { ByteReader, ByteWriter } from './varint.js'

export const PROFILE_MAGIC = 'VTPF'
export const PROFILE_FORMAT_VERSION = 1
/** Decoding refuses larger inputs (binary or JSON text is bounded separately). */
export const MAX_PROFILE_BYTES = 1024 * 1024
/** 2^20 entries: a 4 GiB read set at 4 KiB blocks; no boot reads that much. */
export const MAX_PROFILE_ENTRIES = 1 << 20
/** `boots` saturates here: older boots then weigh as this many, so the profile keeps learning. < 255/2 keeps touch counts exact. */
export const MAX_PROFILE_BOOTS = 100
/** Times past a week after instance start are refused. */
export const MAX_PROFILE_TIME_MS = 7 * 24 * 3600 * 1000
export const CONFIDENCE_STEPS = 255
export const MIN_PROFILE_BLOCK_SIZE_BYTES = 4096
export const MAX_PROFILE_BLOCK_SIZE_BYTES = 16 * 1024 * 1024
export const MAX_PROFILE_BLOCK_COUNT = 0xffffffff
const IMAGE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const ROOT_HEX_PATTERN = /^[0-9a-f]{2,128}$/

export interface ProfileEntry {
  block: number
  /** First touch, whole ms after the instance started (a robust average over boots once merged). */
  tMs: number
  /** Fraction of boots that touched the block, 0..1 (multiples of 1/255). */
  confidence: number
}

export interface BootProfile {
  imageId: string
  rootHex: string
  blockSizeBytes: number
  blockCount: number
  /** Content hash (16 hex digits) of the binary form. */
  version: string
  /** Boots merged into this profile (saturates at MAX_PROFILE_BOOTS). */
  boots: number
  /** In likely read order; each block at most once. */
  entries: ProfileEntry[]
}

/** What a profile is checked against: a blockstack Manifest fits this shape. */
export interface ProfileTarget {
  rootHex: string
  blockSizeBytes: number
  blockCount: number
}

export interface ProfileDecodeLimits {
  maxBytes?: number
  maxEntries?: number
  /** When given, the decoded profile must fit this image (else ProfileMismatchError). */
  expect?: ProfileTarget
}

export type ProfileFields = Omit<BootProfile, 'version'>

export function quantizeConfidence (confidence: number): number {
  const q = Math.round(Math.min(1, Math.max(0, confidence)) * CONFIDENCE_STEPS)
  return Math.max(1, q)
}

/** Normalizes times and confidences to what the binary form carries, checks the shape and sets the version. */
export function finalizeProfile (fields: ProfileFields, limits: ProfileDecodeLimits = {}): BootProfile {
  const entries = fields.entries.map(e => ({
    block: e.block,
    tMs: Math.round(e.tMs),
    confidence: quantizeConfidence(e.confidence) / CONFIDENCE_STEPS
  }))
  const normalized: ProfileFields = { ...fields, entries }
  checkProfileShape(normalized, limits)
  const encoded = encodeFields(normalized)
  return { ...normalized, version: profileVersionOf(encoded) }
}

export function profileVersionOf (encoded: Uint8Array): string {
  return createHash('sha256').update(encoded).digest('hex').slice(0, 16)
}

/** Throws ProfileDecodeError unless the fields are within every bound the binary form allows. */
export function checkProfileShape (p: ProfileFields, limits: ProfileDecodeLimits = {}): void {
  const fail = (msg: string): never => { throw new ProfileDecodeError(msg) }
  if (typeof p.imageId !== 'string' || !IMAGE_ID_PATTERN.test(p.imageId)) fail(`bad imageId: ${String(p.imageId).slice(0, 80)}`)
  if (typeof p.rootHex !== 'string' || !ROOT_HEX_PATTERN.test(p.rootHex)) fail('bad rootHex: lowercase hex, 2 to 128 digits')
  const bs = p.blockSizeBytes
  if (!Number.isInteger(bs) || bs < MIN_PROFILE_BLOCK_SIZE_BYTES || bs > MAX_PROFILE_BLOCK_SIZE_BYTES || (bs & (bs - 1)) !== 0) {
    fail(`bad blockSizeBytes: ${bs}`)
  }
  if (!Number.isInteger(p.blockCount) || p.blockCount < 1 || p.blockCount > MAX_PROFILE_BLOCK_COUNT) fail(`bad blockCount: ${p.blockCount}`)
  if (!Number.isInteger(p.boots) || p.boots < 1 || p.boots > MAX_PROFILE_BOOTS) fail(`bad boots: ${p.boots}`)
  if (!Array.isArray(p.entries)) fail('entries must be an array')
  const maxEntries = Math.min(p.blockCount, limits.maxEntries ?? MAX_PROFILE_ENTRIES, MAX_PROFILE_ENTRIES)
  if (p.entries.length > maxEntries) fail(`too many entries: ${p.entries.length} > ${maxEntries}`)
  const seen = new Set<number>()
  for (const e of p.entries) {
    if (!Number.isInteger(e.block) || e.block < 0 || e.block >= p.blockCount) fail(`entry block out of range: ${e.block}`)
    if (seen.has(e.block)) fail(`block listed twice: ${e.block}`)
    seen.add(e.block)
    if (!Number.isInteger(e.tMs) || e.tMs < 0 || e.tMs > MAX_PROFILE_TIME_MS) fail(`entry time out of range: ${e.tMs}`)
    if (!(e.confidence > 0 && e.confidence <= 1)) fail(`entry confidence out of range: ${e.confidence}`)
  }
  if (limits.expect !== undefined) checkProfileFits(p, limits.expect)
}

/** Throws ProfileMismatchError unless the profile was made for this image content and geometry. */
export function checkProfileFits (p: ProfileTarget, target: ProfileTarget): void {
  if (p.rootHex !== target.rootHex) throw new ProfileMismatchError(`profile is for root ${p.rootHex.slice(0, 16)}…, image has ${target.rootHex.slice(0, 16)}…`)
  if (p.blockSizeBytes !== target.blockSizeBytes) throw new ProfileMismatchError(`profile block size ${p.blockSizeBytes} != image block size ${target.blockSizeBytes}`)
  if (p.blockCount !== target.blockCount) throw new ProfileMismatchError(`profile block count ${p.blockCount} != image block count ${target.blockCount}`)
}

export function encodeProfile (p: BootProfile): Uint8Array {
  return encodeFields(p)
}

function encodeFields (p: ProfileFields): Uint8Array {
  const w = new ByteWriter(64 + p.entries.length * 2)
  w.bytes(new TextEncoder().encode(PROFILE_MAGIC))
  w.byte(PROFILE_FORMAT_VERSION)
  const id = new TextEncoder().encode(p.imageId)
  w.uvarint(id.length); w.bytes(id)
  const root = new TextEncoder().encode(p.rootHex)
  w.uvarint(root.length); w.bytes(root)
  w.uvarint(p.blockSizeBytes)
  w.uvarint(p.blockCount)
  w.uvarint(p.boots)
  w.uvarint(p.entries.length)
  const runs: Array<{ start: number, length: number, tMs: number, q: number }> = []
  for (const e of p.entries) {
    const q = quantizeConfidence(e.confidence)
    const tMs = Math.round(e.tMs)
    const last = runs[runs.length - 1]
    if (last !== undefined && last.start + last.length === e.block && last.tMs === tMs && last.q === q) last.length++
    else runs.push({ start: e.block, length: 1, tMs, q })
  }
  w.uvarint(runs.length)
  let prevEnd = 0
  let prevT = 0
  for (const r of runs) {
    w.svarint(r.start - prevEnd)
    w.uvarint(r.length - 1)
    w.svarint(r.tMs - prevT)
    w.byte(r.q)
    prevEnd = r.start + r.length
    prevT = r.tMs
  }
  return w.finish()
}

export function decodeProfile (data: Uint8Array, limits: ProfileDecodeLimits = {}): BootProfile {
  const maxBytes = Math.min(limits.maxBytes ?? MAX_PROFILE_BYTES, MAX_PROFILE_BYTES)
  if (!(data instanceof Uint8Array)) throw new ProfileDecodeError('profile must be bytes')
  if (data.length > maxBytes) throw new ProfileDecodeError(`profile too large: ${data.length} > ${maxBytes} bytes`)
  const r = new ByteReader(data)
  const magic = new TextDecoder().decode(r.bytes(4, 'magic'))
  if (magic !== PROFILE_MAGIC) throw new ProfileDecodeError('not a profile (bad magic)')
  const format = r.byte('format version')
  if (format !== PROFILE_FORMAT_VERSION) throw new ProfileDecodeError(`unsupported profile format ${format}`)
  const utf8 = new TextDecoder('utf-8', { fatal: true })
  let imageId: string
  let rootHex: string
  try {
    imageId = utf8.decode(r.bytes(r.uvarint('imageId length', 1, 64), 'imageId'))
    rootHex = utf8.decode(r.bytes(r.uvarint('rootHex length', 2, 128), 'rootHex'))
  } catch (err) {
    if (err instanceof ProfileDecodeError) throw err
    throw new ProfileDecodeError('imageId or rootHex is not utf-8')
  }
  const blockSizeBytes = r.uvarint('blockSizeBytes', MIN_PROFILE_BLOCK_SIZE_BYTES, MAX_PROFILE_BLOCK_SIZE_BYTES)
  const blockCount = r.uvarint('blockCount', 1, MAX_PROFILE_BLOCK_COUNT)
  if (limits.expect !== undefined) checkProfileFits({ rootHex, blockSizeBytes, blockCount }, limits.expect)
  const boots = r.uvarint('boots', 1, MAX_PROFILE_BOOTS)
  const maxEntries = Math.min(blockCount, limits.maxEntries ?? MAX_PROFILE_ENTRIES, MAX_PROFILE_ENTRIES)
  const entryCount = r.uvarint('entryCount', 0, maxEntries)
  // Each run takes at least 4 bytes, so runCount is bounded by the input too.
  const runCount = r.uvarint('runCount', entryCount > 0 ? 1 : 0, Math.min(entryCount, Math.floor(r.remaining / 4)))
  const entries: ProfileEntry[] = []
  let prevEnd = 0
  let prevT = 0
  for (let i = 0; i < runCount; i++) {
    const start = prevEnd + r.svarint('run start delta', -prevEnd, blockCount - 1 - prevEnd)
    const length = 1 + r.uvarint('run length', 0, Math.min(blockCount - start, entryCount - entries.length) - 1)
    const tMs = prevT + r.svarint('run time delta', -prevT, MAX_PROFILE_TIME_MS - prevT)
    const q = r.byte('confidence')
    if (q === 0) throw new ProfileDecodeError('zero confidence')
    for (let b = start; b < start + length; b++) entries.push({ block: b, tMs, confidence: q / CONFIDENCE_STEPS })
    prevEnd = start + length
    prevT = tMs
  }
  if (entries.length !== entryCount) throw new ProfileDecodeError(`runs hold ${entries.length} entries, header says ${entryCount}`)
  if (r.remaining !== 0) throw new ProfileDecodeError(`${r.remaining} trailing bytes`)
  const fields: ProfileFields = { imageId, rootHex, blockSizeBytes, blockCount, boots, entries }
  checkProfileShape(fields, limits) // duplicates, id and root patterns
  // Hash the canonical re-encoding: runs split needlessly by a foreign encoder must not change the version.
  return { ...fields, version: profileVersionOf(encodeFields(fields)) }
}
