// The NBD server against real clients (nbdinfo, nbdcopy, qemu-img, qemu-io, libnbd's Python binding) on a
// unix socket, serving a 64 MiB random and sparse file through the file export. The clients run as child
// processes while the server runs in this process, so every tool call is asynchronous.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { copyFile, mkdtemp, open, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import {
  createNbdServer, openFileExport, staticExportProvider, type FileExport, type NbdServer
} from '../../src/blockstack/nbd/index.js'
import { memoryExport, RawClient, recordingLogger } from '../unit/nbd-helpers.js'

const execFileAsync = promisify(execFile)
const IMAGE_BYTES = 64 * 1024 * 1024
const T = { timeout: 120_000 }
/** libnbd's Python binding is a Debian package for the system Python (python3-libnbd). */
const SYSTEM_PYTHON = '/usr/bin/python3'

let dir: string
let imagePath: string
let image: Buffer
let sock: string
let server: NbdServer
let fileExport: FileExport
const logger = recordingLogger()

const uri = (name: string): string => `nbd+unix:///${name}?socket=${sock}`

function sha256 (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Deterministic offsets/lengths, so a failure can be replayed. */
function* ranges (count: number, maxLength: number): Generator<[number, number]> {
  let x = 0x9e3779b9
  const next = (): number => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x }
  for (let i = 0; i < count; i++) {
    const length = 1 + (next() % maxLength)
    const offset = (next() * 16 + next() % 16) % (IMAGE_BYTES - length)
    yield [offset, length]
  }
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-clients-'))
  imagePath = join(dir, 'image.raw')
  sock = join(dir, 'nbd.sock')
  // Random data with holes: every fourth MiB is never written (sparse), plus an unaligned hole.
  const fh = await open(imagePath, 'w')
  await fh.truncate(IMAGE_BYTES)
  for (let mib = 0; mib < 64; mib++) {
    if (mib % 4 === 3) continue
    const len = mib === 10 ? 1024 * 1024 - 1234 : 1024 * 1024
    await fh.write(randomBytes(len), 0, len, mib * 1024 * 1024)
  }
  await fh.close()
  image = await readFile(imagePath)
  fileExport = await openFileExport(imagePath, { name: 'disk', description: 'test image' })
  server = createNbdServer({
    provider: staticExportProvider([fileExport, memoryExport('small', Buffer.alloc(4096, 7))]),
    logger
  })
  await server.listenUnix(sock)
})

after(async () => {
  await server.close()
  await fileExport.close()
  await rm(dir, { recursive: true, force: true })
})

test('the unix socket is mode 0660', T, async () => {
  assert.equal((await stat(sock)).mode & 0o777, 0o660)
})

test('nbdinfo --list shows both exports; nbdinfo describes the export', T, async () => {
  const list = JSON.parse((await execFileAsync('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${sock}`])).stdout)
  const exports = list.exports as Array<Record<string, unknown>>
  assert.deepEqual(exports.map(e => e['export-name']).sort(), ['disk', 'small'])
  const disk = exports.find(e => e['export-name'] === 'disk')
  assert.equal(disk?.['export-size'], IMAGE_BYTES)
  assert.equal(disk?.description, 'test image')

  const info = JSON.parse((await execFileAsync('nbdinfo', ['--json', uri('disk')])).stdout)
  const e = info.exports[0]
  assert.equal(e['export-size'], IMAGE_BYTES)
  assert.equal(e.is_read_only, true)
  assert.equal(e.can_flush, true)
  assert.equal(e.can_multi_conn, true)
  assert.equal(e.block_size_minimum, 1)
  assert.equal(e.block_size_maximum, 32 * 1024 * 1024)
})

test('nbdcopy of the export reproduces the file byte for byte', T, async () => {
  const out = join(dir, 'copy.raw')
  await execFileAsync('nbdcopy', [uri('disk'), out])
  assert.equal(sha256(await readFile(out)), sha256(image))
  await rm(out)
})

test('qemu-img compare finds the export identical to the file, and a changed copy different', T, async () => {
  await execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('disk'), imagePath])
  const changed = join(dir, 'changed.raw')
  await copyFile(imagePath, changed)
  const fh = await open(changed, 'r+')
  await fh.write(Buffer.from([image[40_000_000] ^ 0xff]), 0, 1, 40_000_000)
  await fh.close()
  await assert.rejects(execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('disk'), changed]), (err: { code?: number }) => err.code === 1)
  await rm(changed)
})

test('qemu-io random reads match the file', T, async () => {
  for (const [offset, length] of ranges(8, 300)) {
    const { stdout } = await execFileAsync('qemu-io', ['-f', 'raw', '-r', '-c', `read -v ${offset} ${length}`, uri('disk')])
    // Lines look like "0000a000:  4d 5a 90 00 ...  MZ..": take the hex byte columns.
    const bytes: number[] = []
    for (const line of stdout.split('\n')) {
      const m = /^[0-9a-f]{8}:\s+((?:[0-9a-f]{2}\s)+)/.exec(line)
      if (m !== null) bytes.push(...m[1].trim().split(/\s+/).map(h => parseInt(h, 16)))
    }
    assert.ok(Buffer.from(bytes).equals(image.subarray(offset, offset + length)), `read ${offset}+${length}`)
  }
})

async function libnbd (script: string): Promise<string> {
  const { stdout } = await execFileAsync(SYSTEM_PYTHON, ['-c', script], { maxBuffer: 16 * 1024 * 1024 })
  return stdout
}

const hasLibnbdPython = execFileAsync(SYSTEM_PYTHON, ['-c', 'import nbd']).then(() => true, () => false)

test('libnbd: random reads match; writes get EPERM and reads past the end EINVAL from the server', T, async () => {
  assert.ok(await hasLibnbdPython, `${SYSTEM_PYTHON} cannot import nbd: python3-libnbd is missing (scripts/setup.sh installs it)`)
  const list = [...ranges(200, 256 * 1024)]
  // Strict mode off: libnbd sends what it would refuse itself (write to read-only, read past the end),
  // so the answers come from our server.
  const out = await libnbd(`
import nbd, hashlib, json
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(${JSON.stringify(uri('disk'))})
res = {"hashes": [hashlib.sha256(h.pread(l, o)).hexdigest() for o, l in ${JSON.stringify(list)}]}
def err(f):
    try:
        f()
        return "ok"
    except nbd.Error as e:
        return e.errno
res["write"] = err(lambda: h.pwrite(b"x" * 4096, 0))
res["trim"] = err(lambda: h.trim(4096, 0))
res["zero"] = err(lambda: h.zero(4096, 0))
res["past_end"] = err(lambda: h.pread(4096, h.get_size() - 100))
res["flush"] = err(lambda: h.flush())
res["after"] = hashlib.sha256(h.pread(4096, 8192)).hexdigest()
h.shutdown()
print(json.dumps(res))
`)
  const res = JSON.parse(out)
  assert.deepEqual(res.hashes, list.map(([o, l]) => sha256(image.subarray(o, o + l))))
  assert.equal(res.write, 'EPERM')
  assert.equal(res.trim, 'EPERM')
  assert.equal(res.zero, 'EPERM')
  assert.equal(res.past_end, 'EINVAL')
  assert.equal(res.flush, 'ok')
  assert.equal(res.after, sha256(image.subarray(8192, 12288)), 'the connection survives the errors')
})

test('bad clients (garbage, truncated, oversize option, vanishing mid-request) leave the server serving', T, async () => {
  const garbage = await RawClient.connect(sock)
  garbage.write(randomBytes(1000))
  await garbage.closed

  const truncated = await RawClient.connect(sock)
  await truncated.handshake()
  truncated.write(Buffer.from('IHAVEOPT\0\0'))
  truncated.socket.end()
  await truncated.closed

  const oversize = await RawClient.connect(sock)
  await oversize.handshake()
  oversize.sendOption(3, Buffer.alloc(0), 0xffffffff)
  await oversize.closed

  const vanishing = await RawClient.connect(sock)
  await vanishing.open('disk')
  for (let h = 0; h < 32; h++) vanishing.sendRequest(0, h, h * 1024 * 1024, 1024 * 1024)
  await vanishing.read(100) // part of the first reply, then gone
  vanishing.destroy()

  const out = join(dir, 'copy2.raw')
  await execFileAsync('nbdcopy', [uri('disk'), out])
  assert.equal(sha256(await readFile(out)), sha256(image))
  await execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('disk'), imagePath])
  assert.equal(logger.entries.filter(e => e.level === 'error').length, 0, 'nothing logged as an error')
})
