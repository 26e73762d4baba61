// A new, empty qcow2 overlay over a raw backing: the file `qemu-img create -u -f qcow2 -F raw -b BACKING PATH
// SIZE` writes, byte for byte (test/unit/qcow2-overlay.test.ts compares the two for several sizes and runs
// `qemu-img check` on ours). Why not run qemu-img: a create at the start of a boot wave is on the boot's
// critical path, and spawning qemu-img there (a 250 MB process forks, qemu-img loads its ~100 shared
// libraries) took 65-270 ms of a create on the loaded 8-host testbed, against well under 1 ms for writing
// these ~200 KB.
//
// Layout (docs/interop/qcow2.txt in QEMU), 64 KiB clusters, refcounts of 16 bits, as qemu-img lays it out:
//   cluster 0: the header (version 3, 112 bytes), the header extensions (backing format, feature names) and
//              the backing file's name;
//   cluster 1: the refcount table (one entry: cluster 2);
//   cluster 2: the refcount block (refcount 1 for every cluster in use: 0, 1, 2 and the L1 table's);
//   cluster 3 on: the L1 table, all zero (nothing allocated: every read goes to the backing). The file ends
//              where the L1 table ends.

import { writeFileSync } from 'node:fs'

const CLUSTER_BITS = 16
const CLUSTER_BYTES = 1 << CLUSTER_BITS
/** Bytes one L2 table maps: (cluster / 8-byte entries) clusters. */
const L2_COVERS_BYTES = (CLUSTER_BYTES / 8) * CLUSTER_BYTES
const HEADER_BYTES = 112
const REFCOUNT_ORDER = 4
const REFCOUNT_TABLE_OFFSET = 1 * CLUSTER_BYTES
const REFCOUNT_BLOCK_OFFSET = 2 * CLUSTER_BYTES
const L1_TABLE_OFFSET = 3 * CLUSTER_BYTES
/** qcow2's limit on the backing file name. */
const MAX_BACKING_NAME_BYTES = 1023
/** 256 TiB: an L1 table of 4 MiB, counted by the one refcount block (32,768 clusters of 16-bit counts). */
const MAX_OVERLAY_BYTES = 2 ** 48

const EXT_BACKING_FORMAT = 0xe2792aca
const EXT_FEATURE_NAMES = 0x6803f857
/** The feature name table qemu-img 7.2 writes: [type (0 incompatible, 1 compatible, 2 autoclear), bit, name]. */
const FEATURE_NAMES: ReadonlyArray<readonly [number, number, string]> = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data']
]
const FEATURE_NAME_ENTRY_BYTES = 48

/** The overlay cannot be written in this form (a backing name too long, a size out of range). */
export class Qcow2OverlayError extends Error {
  override name = 'Qcow2OverlayError'
}

function pad8 (n: number): number {
  return Math.ceil(n / 8) * 8
}

/** The overlay's bytes: virtual size `sizeBytes` rounded up to 512, as qemu-img rounds it. */
export function qcow2OverlayBytes (sizeBytes: number, backing: string, backingFormat = 'raw'): Buffer {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw new Qcow2OverlayError(`overlay size ${sizeBytes} is not a byte count`)
  if (sizeBytes > MAX_OVERLAY_BYTES) throw new Qcow2OverlayError(`overlay size ${sizeBytes} is over ${MAX_OVERLAY_BYTES} bytes`)
  const name = Buffer.from(backing, 'utf8')
  if (name.length === 0 || name.length > MAX_BACKING_NAME_BYTES) throw new Qcow2OverlayError(`backing name of ${name.length} bytes (1..${MAX_BACKING_NAME_BYTES})`)
  const format = Buffer.from(backingFormat, 'utf8')
  const size = Math.ceil(sizeBytes / 512) * 512
  const l1Entries = Math.ceil(size / L2_COVERS_BYTES)
  // An empty image has no L1 table at all (offset 0), as qemu-img writes it.
  const l1Clusters = Math.ceil(l1Entries * 8 / CLUSTER_BYTES)
  const clustersInUse = 3 + l1Clusters

  // Cluster 0: header, extensions, backing name.
  const extBytes = (8 + pad8(format.length)) + (8 + FEATURE_NAMES.length * FEATURE_NAME_ENTRY_BYTES) + 8
  const backingOffset = HEADER_BYTES + extBytes
  if (backingOffset + name.length > CLUSTER_BYTES) throw new Qcow2OverlayError('overlay header does not fit its cluster')
  const out = Buffer.alloc(L1_TABLE_OFFSET + l1Entries * 8)
  out.write('QFI\xfb', 0, 'latin1')
  out.writeUInt32BE(3, 4) // version
  out.writeBigUInt64BE(BigInt(backingOffset), 8)
  out.writeUInt32BE(name.length, 16)
  out.writeUInt32BE(CLUSTER_BITS, 20)
  out.writeBigUInt64BE(BigInt(size), 24)
  // 32: crypt_method 0
  out.writeUInt32BE(l1Entries, 36)
  out.writeBigUInt64BE(BigInt(l1Entries === 0 ? 0 : L1_TABLE_OFFSET), 40)
  out.writeBigUInt64BE(BigInt(REFCOUNT_TABLE_OFFSET), 48)
  out.writeUInt32BE(1, 56) // refcount_table_clusters
  // 60: nb_snapshots 0; 64: snapshots_offset 0; 72, 80, 88: incompatible, compatible, autoclear features 0
  out.writeUInt32BE(REFCOUNT_ORDER, 96)
  out.writeUInt32BE(HEADER_BYTES, 100)
  // 104: compression_type 0 (zlib), then padding to 112.
  let at = HEADER_BYTES
  out.writeUInt32BE(EXT_BACKING_FORMAT, at)
  out.writeUInt32BE(format.length, at + 4)
  format.copy(out, at + 8)
  at += 8 + pad8(format.length)
  out.writeUInt32BE(EXT_FEATURE_NAMES, at)
  out.writeUInt32BE(FEATURE_NAMES.length * FEATURE_NAME_ENTRY_BYTES, at + 4)
  at += 8
  for (const [type, bit, feature] of FEATURE_NAMES) {
    out.writeUInt8(type, at)
    out.writeUInt8(bit, at + 1)
    out.write(feature, at + 2, 'latin1')
    at += FEATURE_NAME_ENTRY_BYTES
  }
  // Then the end of the extensions (type 0, length 0: zeros already), and at backingOffset the name.
  name.copy(out, backingOffset)

  // Cluster 1: the refcount table points at the one refcount block; cluster 2: that block.
  out.writeBigUInt64BE(BigInt(REFCOUNT_BLOCK_OFFSET), REFCOUNT_TABLE_OFFSET)
  for (let cluster = 0; cluster < clustersInUse; cluster++) out.writeUInt16BE(1, REFCOUNT_BLOCK_OFFSET + cluster * 2)
  return out
}

/** Writes a new overlay (fails if `path` exists); synchronously: a few hundred KiB at most, on instance.create's critical path. */
export function writeQcow2OverlaySync (path: string, sizeBytes: number, backing: string): void {
  writeFileSync(path, qcow2OverlayBytes(sizeBytes, backing), { flag: 'wx' })
}
