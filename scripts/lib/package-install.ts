// Packs this checkout with `npm pack` (prepack compiles to dist/) and installs the tarball the way an operator
// would, `npm install -g --prefix PREFIX`, for the package test and the start-up benchmark. The TypeScript
// runtime is then deleted from the install if npm put it there, so whatever runs from it proves it needs none.

import { rm, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { ROOT } from './agent-process.js'

export class PackageInstallError extends Error {
  override name = 'PackageInstallError'
}

export interface InstalledPackage {
  tarball: string
  /** Files in the tarball, relative to the package root. */
  files: string[]
  prefix: string
  packageDir: string
  vmthunderd: string
  vmthunderctl: string
}

const PACK_TIMEOUT_MS = 600_000
const INSTALL_TIMEOUT_MS = 600_000
/** Packages that only a source checkout needs; none may be loaded by the installed package. */
export const BUILD_ONLY_PACKAGES = ['tsx', 'typescript', 'esbuild', '@esbuild']

export async function packAndInstall (dir: string, options: { signal?: AbortSignal } = {}): Promise<InstalledPackage> {
  const packed = await execa('npm', ['pack', '--json', '--pack-destination', dir], {
    cwd: ROOT, timeout: PACK_TIMEOUT_MS, cancelSignal: options.signal, reject: false
  })
  if (packed.exitCode !== 0) throw new PackageInstallError(`npm pack failed (${packed.exitCode}):\n${packed.stderr}`)
  // npm prints the prepack script's output before the JSON.
  const json = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('[')))
  const tarball = join(dir, json[0].filename)
  const files: string[] = json[0].files.map((f: { path: string }) => f.path)
  const prefix = join(dir, 'prefix')
  const installed = await execa('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], {
    cwd: dir, timeout: INSTALL_TIMEOUT_MS, cancelSignal: options.signal, reject: false
  })
  if (installed.exitCode !== 0) throw new PackageInstallError(`npm install -g failed (${installed.exitCode}):\n${installed.stderr}`)
  const packageDir = join(prefix, 'lib', 'node_modules', 'vmthunderd')
  const modules = join(packageDir, 'node_modules')
  const present = new Set(await readdir(modules).catch(() => [] as string[]))
  for (const name of BUILD_ONLY_PACKAGES) {
    if (present.has(name)) await rm(join(modules, name), { recursive: true, force: true })
  }
  return { tarball, files, prefix, packageDir, vmthunderd: join(prefix, 'bin', 'vmthunderd'), vmthunderctl: join(prefix, 'bin', 'vmthunderctl') }
}
