// The image manifest: what an image is, block by block, signed by the agent that registered it (its origin).
//
// Wire/disk form (all integers big-endian):
//   magic "VMTM" | version u8 (1) | reserved u8 x3 | blockSizeBytes u32 | sizeBytes u64 | createdAtMs u64
//   | imageIdLength u16 | imageId utf-8 | originPublicKey 32 (raw Ed25519) | blockCount u32
//   | blockHashes blockCount x 32 (SHA-256 of each block; the last block may be short) | signature 64
// The root digest is SHA-256 over every byte before the signature, so it commits to the header and to every
// block hash; the signature is Ed25519 over the root. A block whose hash equals the hash of zeros of its
// length is a zero block: caches keep it as a hole and peers never send it.

import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { ManifestDecodeError, ManifestSignatureError, UntrustedOriginError, InvalidImageIdError } from './errors.js'
import { sourceSizeBytes } from './device-size.js'
import { signEd25519, verifyEd25519, type SigningKey } from './signing.js'

export const MANIFEST_MAGIC = 'VMTM'
export const MANIFEST_VERSION = 1
export const HASH_BYTES = 32
export const SIGNATURE_BYTES = 64
export const PUBLIC_KEY_BYTES = 32
/** Decoding refuses manifests larger than this (2^21 blocks: 128 GiB at 64 KiB blocks). */
export const MAX_MANIFEST_BYTES = 80 * 1024 * 1024
export const MIN_BLOCK_SIZE_BYTES = 4096
export const MAX_BLOCK_SIZE_BYTES = 16 * 1024 * 1024
const IMAGE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export interface Manifest {
  imageId: string
  sizeBytes: number
  blockSizeBytes: number
  blockCount: number
  createdAtMs: number
  /** blockCount x 32 bytes. */
  blockHashes: Uint8Array
  originPublicKey: Uint8Array
  /** SHA-256 over the encoded manifest up to the signature. */
  root: Uint8Array
  rootHex: string
  signature: Uint8Array
  /** The encoded form, as signed (kept so that it can be served to peers byte for byte). */
  encoded: Uint8Array
  /** One bit per block (LSB first): set where the block is all zeros. */
  zeroBlocks: Uint8Array
}

export function validateImageId (imageId: unknown): string {
  if (typeof imageId !== 'string' || !IMAGE_ID_PATTERN.test(imageId)) {
    throw new InvalidImageIdError(`image id must match ${IMAGE_ID_PATTERN.source} (letters, digits, '.', '_', '-'; at most 64; no path separators)`)
  }
  return imageId
}

export function validateBlockSize (blockSizeBytes: number): number {
  if (!Number.isInteger(blockSizeBytes) || blockSizeBytes < MIN_BLOCK_SIZE_BYTES || blockSizeBytes > MAX_BLOCK_SIZE_BYTES ||
    (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
    throw new RangeError(`blockSizeBytes must be a power of two from ${MIN_BLOCK_SIZE_BYTES} to ${MAX_BLOCK_SIZE_BYTES}, got ${blockSizeBytes}`)
  }
  return blockSizeBytes
}

export function blockLength (manifest: Pick<Manifest, 'sizeBytes' | 'blockSizeBytes'>, index: number): number {
  const start = index * manifest.blockSizeBytes
  return Math.min(manifest.blockSizeBytes, manifest.sizeBytes - start)
}

export function blockHash (manifest: Manifest, index: number): Uint8Array {
  return manifest.blockHashes.subarray(index * HASH_BYTES, (index + 1) * HASH_BYTES)
}

export function isZeroBlock (manifest: Manifest, index: number): boolean {
  return (manifest.zeroBlocks[index >> 3] & (1 << (index & 7))) !== 0
}

export function sha256 (data: Uint8Array): Uint8Array {
  return createHash('sha256').update(data).digest()
}

/** True when `data` is exactly the block the manifest names at `index`. */
export function verifyBlock (manifest: Manifest, index: number, data: Uint8Array): boolean {
  if (index < 0 || index >= manifest.blockCount || data.byteLength !== blockLength(manifest, index)) return false
  return Buffer.from(sha256(data)).equals(blockHash(manifest, index))
}

const zeroHashes = new Map<number, Buffer>()
function zeroHashOf (length: number): Buffer {
  let hash = zeroHashes.get(length)
  if (hash === undefined) {
    hash = Buffer.from(sha256(new Uint8Array(length)))
    if (zeroHashes.size < 64) zeroHashes.set(length, hash)
  }
  return hash
}

function headerLength (imageIdBytes: number): number {
  return 4 + 1 + 3 + 4 + 8 + 8 + 2 + imageIdBytes + PUBLIC_KEY_BYTES + 4
}

interface ManifestFields {
  imageId: string
  sizeBytes: number
  blockSizeBytes: number
  createdAtMs: number
  blockHashes: Uint8Array
  originPublicKey: Uint8Array
}

function encodeUnsigned (fields: ManifestFields): Buffer {
  const idBytes = Buffer.from(fields.imageId, 'utf8')
  const blockCount = fields.blockHashes.byteLength / HASH_BYTES
  const out = Buffer.alloc(headerLength(idBytes.length) + fields.blockHashes.byteLength + SIGNATURE_BYTES)
  let at = out.write(MANIFEST_MAGIC, 0, 'latin1')
  at = out.writeUInt8(MANIFEST_VERSION, at) + 3
  at = out.writeUInt32BE(fields.blockSizeBytes, at)
  at = out.writeBigUInt64BE(BigInt(fields.sizeBytes), at)
  at = out.writeBigUInt64BE(BigInt(fields.createdAtMs), at)
  at = out.writeUInt16BE(idBytes.length, at)
  at += idBytes.copy(out, at)
  at += Buffer.from(fields.originPublicKey).copy(out, at)
  at = out.writeUInt32BE(blockCount, at)
  Buffer.from(fields.blockHashes.buffer, fields.blockHashes.byteOffset, fields.blockHashes.byteLength).copy(out, at)
  return out
}

function zeroBitmap (sizeBytes: number, blockSizeBytes: number, blockHashes: Uint8Array): Uint8Array {
  const blockCount = blockHashes.byteLength / HASH_BYTES
  const bitmap = new Uint8Array(Math.ceil(blockCount / 8))
  const hashes = Buffer.from(blockHashes.buffer, blockHashes.byteOffset, blockHashes.byteLength)
  // Every block but the last is full size: indexOf jumps from one zero block's hash to the next in native code.
  // A byte loop over every hash ran in the interpreter at start-up, 32 steps per zero block: 8 ms of a
  // daemon's start with 10 mostly sparse images.
  const full = blockCount - 1
  const zero = zeroHashOf(blockSizeBytes)
  for (let at = hashes.indexOf(zero); at !== -1 && at < full * HASH_BYTES; at = hashes.indexOf(zero, at + 1)) {
    // A match that straddles two hashes is not a block's hash.
    if (at % HASH_BYTES === 0) bitmap[at / HASH_BYTES >> 3] |= 1 << ((at / HASH_BYTES) & 7)
  }
  const last = full * HASH_BYTES
  if (hashes.subarray(last, last + HASH_BYTES).equals(zeroHashOf(sizeBytes - full * blockSizeBytes))) bitmap[full >> 3] |= 1 << (full & 7)
  return bitmap
}

/** Builds and signs a manifest from the fields. */
export function signManifest (fields: ManifestFields, key: SigningKey): Manifest {
  validateImageId(fields.imageId)
  validateBlockSize(fields.blockSizeBytes)
  const encoded = encodeUnsigned(fields)
  const body = encoded.subarray(0, encoded.length - SIGNATURE_BYTES)
  const root = sha256(body)
  const signature = signEd25519(key, root)
  Buffer.from(signature).copy(encoded, body.length)
  return decodeManifest(encoded)
}

export interface DecodeOptions {
  trustedKeys?: readonly Uint8Array[]
  /**
   * The root of a manifest whose signature was verified before, recorded where only this host writes (the image
   * registry's record, committed after the check): a body that hashes to it is that manifest, so its signature
   * is not checked again (an Ed25519 verification, about 1 ms per image at a cold start); any other body is
   * refused. Block hashes, which are what every served byte is checked against, are covered by the root either way.
   */
  verifiedRootHex?: string
}

/**
 * Decodes a manifest and checks its structure and its signature against the key it names (or its root against
 * `verifiedRootHex`). Whether that key is trusted is a separate question: see checkTrusted.
 */
export function decodeManifest (bytes: Uint8Array, options: DecodeOptions = {}): Manifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) throw new ManifestDecodeError(`manifest is ${bytes.byteLength} bytes, over the ${MAX_MANIFEST_BYTES} limit`)
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const need = (n: number, what: string): void => {
    if (buf.length < n) throw new ManifestDecodeError(`manifest truncated in ${what}`)
  }
  need(headerLength(0), 'header')
  if (buf.toString('latin1', 0, 4) !== MANIFEST_MAGIC) throw new ManifestDecodeError('not a manifest (bad magic)')
  const version = buf.readUInt8(4)
  if (version !== MANIFEST_VERSION) throw new ManifestDecodeError(`unsupported manifest version ${version}`)
  const blockSizeBytes = buf.readUInt32BE(8)
  const sizeBig = buf.readBigUInt64BE(12)
  const createdBig = buf.readBigUInt64BE(20)
  const idLength = buf.readUInt16BE(28)
  need(headerLength(idLength), 'image id')
  const imageId = buf.toString('utf8', 30, 30 + idLength)
  try {
    validateImageId(imageId)
    validateBlockSize(blockSizeBytes)
  } catch (err) {
    throw new ManifestDecodeError(`bad manifest header: ${(err as Error).message}`)
  }
  if (sizeBig > BigInt(Number.MAX_SAFE_INTEGER) || createdBig > BigInt(Number.MAX_SAFE_INTEGER)) throw new ManifestDecodeError('manifest size out of range')
  const sizeBytes = Number(sizeBig)
  let at = 30 + idLength
  const originPublicKey = new Uint8Array(buf.subarray(at, at + PUBLIC_KEY_BYTES))
  // Trust first: a manifest from an untrusted origin costs no hashing of its (up to MAX_MANIFEST_BYTES) body.
  if (options.trustedKeys !== undefined) checkTrustedKey(imageId, originPublicKey, options.trustedKeys)
  at += PUBLIC_KEY_BYTES
  const blockCount = buf.readUInt32BE(at)
  at += 4
  if (blockCount !== Math.ceil(sizeBytes / blockSizeBytes)) throw new ManifestDecodeError(`block count ${blockCount} does not match size ${sizeBytes} / block size ${blockSizeBytes}`)
  if (blockCount === 0) throw new ManifestDecodeError('manifest of an empty image')
  const expected = at + blockCount * HASH_BYTES + SIGNATURE_BYTES
  if (buf.length !== expected) throw new ManifestDecodeError(`manifest is ${buf.length} bytes, expected ${expected}`)
  const blockHashes = new Uint8Array(buf.subarray(at, at + blockCount * HASH_BYTES))
  const body = buf.subarray(0, expected - SIGNATURE_BYTES)
  const signature = new Uint8Array(buf.subarray(expected - SIGNATURE_BYTES))
  const root = sha256(body)
  const rootHex = Buffer.from(root).toString('hex')
  if (options.verifiedRootHex !== undefined) {
    if (rootHex !== options.verifiedRootHex) throw new ManifestSignatureError(`manifest of ${imageId}: its root is not the one verified before`)
  } else if (!verifyEd25519(originPublicKey, root, signature)) {
    throw new ManifestSignatureError(`manifest of ${imageId}: signature does not verify`)
  }
  return {
    imageId,
    sizeBytes,
    blockSizeBytes,
    blockCount,
    createdAtMs: Number(createdBig),
    blockHashes,
    originPublicKey,
    root,
    rootHex,
    signature,
    encoded: new Uint8Array(buf),
    zeroBlocks: zeroBitmap(sizeBytes, blockSizeBytes, blockHashes)
  }
}

/** Throws UntrustedOriginError unless the manifest's origin key is one of `trustedKeys` (raw 32 bytes each). */
export function checkTrusted (manifest: Manifest, trustedKeys: readonly Uint8Array[]): void {
  checkTrustedKey(manifest.imageId, manifest.originPublicKey, trustedKeys)
}

/** Whether the manifest's origin key is one of `trustedKeys` (raw 32 bytes each). */
export function isTrustedOrigin (manifest: Manifest, trustedKeys: readonly Uint8Array[]): boolean {
  return isTrustedKey(manifest.originPublicKey, trustedKeys)
}

function isTrustedKey (originPublicKey: Uint8Array, trustedKeys: readonly Uint8Array[]): boolean {
  const origin = Buffer.from(originPublicKey)
  return trustedKeys.some(key => origin.equals(key))
}

function checkTrustedKey (imageId: string, originPublicKey: Uint8Array, trustedKeys: readonly Uint8Array[]): void {
  if (!isTrustedKey(originPublicKey, trustedKeys)) {
    throw new UntrustedOriginError(`manifest of ${imageId} is signed by ${Buffer.from(originPublicKey).toString('hex')}, which is not a trusted origin`)
  }
}

/** Checks that the origin is trusted (before any hashing), decodes, and verifies the signature. */
export function acceptManifest (bytes: Uint8Array, trustedKeys: readonly Uint8Array[]): Manifest {
  return decodeManifest(bytes, { trustedKeys })
}

export interface HashFileOptions {
  imageId: string
  path: string
  blockSizeBytes: number
  key: SigningKey
  signal?: AbortSignal
  nowMs?: number
  /** Called for every block in order, after it was hashed (used to copy the image into a cache in one pass). */
  onBlock?: (index: number, data: Uint8Array, isZero: boolean) => Promise<void> | void
  /**
   * Called with the bytes hashed so far and the file's size: once with 0 before the first read, then after
   * every chunk (8 MiB or one block), so that a large image shows progress rather than a silent wait.
   */
  onProgress?: (doneBytes: number, totalBytes: number) => void
}

/** Reads a raw image file once, hashing each block, and returns its signed manifest. */
export async function manifestFromFile (options: HashFileOptions): Promise<Manifest> {
  validateImageId(options.imageId)
  const blockSizeBytes = validateBlockSize(options.blockSizeBytes)
  const handle = await open(options.path, 'r')
  try {
    const stat = await handle.stat({ bigint: true })
    if (!stat.isFile() && !stat.isBlockDevice()) throw new RangeError(`${options.path} is not a regular file`)
    const sizeBytes = await sourceSizeBytes(options.path, stat)
    if (sizeBytes === 0) throw new RangeError(`${options.path} is empty`)
    const blockCount = Math.ceil(sizeBytes / blockSizeBytes)
    const blockHashes = new Uint8Array(blockCount * HASH_BYTES)
    // Read in large chunks: one syscall per many blocks.
    const chunkBlocks = Math.max(1, Math.floor((8 * 1024 * 1024) / blockSizeBytes))
    const chunk = Buffer.allocUnsafe(chunkBlocks * blockSizeBytes)
    options.onProgress?.(0, sizeBytes)
    for (let first = 0; first < blockCount; first += chunkBlocks) {
      options.signal?.throwIfAborted()
      const offset = first * blockSizeBytes
      const want = Math.min(chunk.length, sizeBytes - offset)
      let got = 0
      while (got < want) {
        const { bytesRead } = await handle.read(chunk, got, want - got, offset + got)
        if (bytesRead === 0) throw new RangeError(`${options.path} shrank while it was read`)
        got += bytesRead
      }
      for (let i = first; i < Math.min(blockCount, first + chunkBlocks); i++) {
        const start = (i - first) * blockSizeBytes
        const data = chunk.subarray(start, start + Math.min(blockSizeBytes, sizeBytes - i * blockSizeBytes))
        const hash = sha256(data)
        blockHashes.set(hash, i * HASH_BYTES)
        if (options.onBlock !== undefined) await options.onBlock(i, data, zeroHashOf(data.length).equals(hash))
      }
      options.onProgress?.(offset + want, sizeBytes)
    }
    return signManifest({
      imageId: options.imageId,
      sizeBytes,
      blockSizeBytes,
      createdAtMs: options.nowMs ?? Date.now(),
      blockHashes,
      originPublicKey: options.key.publicKey
    }, options.key)
  } finally {
    await handle.close()
  }
}
