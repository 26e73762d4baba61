// Where an agent's CPU goes, by what the process was doing, from `perf record -g` samples (on-CPU time, what
// /proc counts): V8 compiling (TurboFan, bytecode), code that runs before it is optimized (interpreter and
// baseline inline caches), garbage collection, OpenSSL, the kernel. The V8 profiler (--cpu-prof) cannot say
// this: it samples the main thread only and counts wall time, so on a loaded 2-core machine a syscall that got
// preempted looks expensive and the compiler threads do not show at all.
//
// Input: the text of `perf script -F pid,tid,ip,sym,dso` (a "PID/TID" line, then one "ADDR SYMBOL (DSO)" line
// per frame, leaf first, then a blank line). Each sample counts once, for the first group (in the order below)
// that any of its frames matches. Kernel frames are only ever the leaf end of a stack, so 'kernel' is time
// spent in the kernel itself.

export const ACTIVITY_GROUPS: ReadonlyArray<readonly [string, RegExp]> = [
  ['V8 optimizing compiler (TurboFan)', /v8::internal::compiler::|OptimizedCompilationJob|PipelineCompilationJob|TurbofanCompilationJob/],
  ['V8 baseline compiler (Sparkplug)', /BaselineBatchCompiler|baseline::BaselineCompiler/],
  ['V8 parser and bytecode compiler', /v8::internal::(Parser|Scanner|PreParser|BytecodeGenerator|interpreter::BytecodeGenerator)|Compiler::Compile|CodeSerializer|Deserializer/],
  ['garbage collection', /v8::internal::(Heap::|Scaveng|Marking|MarkCompact|Sweeper|Evacuat|GCTracer|ConcurrentMarking|MinorMarkCompact|MemoryAllocator)|cppgc::/],
  ['V8 runtime (IC misses, property lookup)', /v8::internal::(Runtime_|IC::|LoadIC|KeyedLoadIC|StoreIC|LookupIterator|Object::GetProperty|Map::|TransitionsAccessor|JSObject::)/],
  ['not yet optimized JS (interpreter/baseline inline caches)', /^Builtins_(LoadIC|KeyedLoadIC|StoreIC|KeyedStoreIC|DefineNamedOwnIC|LoadGlobalIC|CallFunction_|Call_|BaselineOutOfLinePrologue|GetProperty|.*Handler$|LoadIC_|KeyedLoadIC_)/],
  ['crypto (OpenSSL: ChaCha20, SHA-256, Ed25519)', /sha256|sha512|ChaCha|Poly1305|chacha|poly1305|fe_mul|fe_sq|x25519|ED25519|ed25519|ge_|EVP_|ossl_/],
  ['memcpy, malloc', /^(__)?mem(move|cpy|set)|^_?_?(int_)?(malloc|free)|^cfree|^_int_/],
  ['kernel', /^\[k\] /]
]
export const OTHER_ACTIVITY = 'other (optimized JS, builtins, node C++)'

export interface ActivityShares {
  samples: number
  /** group -> samples */
  byGroup: Map<string, number>
  /** The innermost JavaScript function of each sample that has one (node --perf-basic-prof names) -> samples */
  byJsFunction: Map<string, number>
}

/** A JIT frame's name as node --perf-basic-prof writes it ("JS:*name file:///path:line:col"), shortened to name and file:line. */
export function jsFunctionOf (symbol: string): string | undefined {
  const m = /^(?:JS|Function|LazyCompile):[*~^+]?(\S*) (\S+?)(?::(\d+))?(?::\d+)?$/.exec(symbol)
  if (m === null) return undefined
  const path = m[2].replace(/^file:\/\//, '').replace(/^node:internal\//, 'node:')
  const file = path.includes('/node_modules/') ? path.replace(/^.*\/node_modules\//, '') : path.replace(/^.*\/(dist|src|bin)\//, '$1/')
  return `${m[1] === '' ? '(anonymous)' : m[1]} ${file}${m[3] !== undefined ? `:${m[3]}` : ''}`
}

/** Counts samples line by line (perf script output of a whole run is large: it is streamed). */
export class ActivityCounter {
  readonly byGroup = new Map<string, number>()
  readonly byJsFunction = new Map<string, number>()
  samples = 0
  private pid: number | undefined
  private frames: string[] = []

  constructor (private readonly pids?: ReadonlySet<number>) {}

  line (line: string): void {
    if (line.trim() === '') { this.flush(); return }
    const head = /^\s*(\d+)\/(\d+)\s*$/.exec(line)
    if (head !== null) { this.flush(); this.pid = Number(head[1]); return }
    const frame = /^\s*[0-9a-f]+ (.*) \((.*)\)\s*$/.exec(line)
    if (frame !== null && this.pid !== undefined) this.frames.push(frame[2].includes('kernel') ? `[k] ${frame[1]}` : frame[1])
  }

  /** Ends the last sample; returns the counts. */
  result (): ActivityShares {
    this.flush()
    return { samples: this.samples, byGroup: this.byGroup, byJsFunction: this.byJsFunction }
  }

  private flush (): void {
    const { pid, frames } = this
    if (pid !== undefined && frames.length > 0 && (this.pids === undefined || this.pids.has(pid))) {
      this.samples++
      let group = OTHER_ACTIVITY
      for (const [name, re] of ACTIVITY_GROUPS) {
        if (frames.some((f) => re.test(f))) { group = name; break }
      }
      this.byGroup.set(group, (this.byGroup.get(group) ?? 0) + 1)
      for (const f of frames) {
        const js = jsFunctionOf(f)
        if (js !== undefined) { this.byJsFunction.set(js, (this.byJsFunction.get(js) ?? 0) + 1); break }
      }
    }
    this.pid = undefined
    this.frames = []
  }
}

/** Aggregates perf script output (as one string) for the processes in `pids` (all when undefined). */
export function activityOf (perfScript: string, pids?: ReadonlySet<number>): ActivityShares {
  const counter = new ActivityCounter(pids)
  for (const line of perfScript.split('\n')) counter.line(line)
  return counter.result()
}
