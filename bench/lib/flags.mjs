/** `--key=value` and bare `--key` (as 'true') from the command line, by key. */
export function commandLineFlags(argv = process.argv.slice(2)) {
  return new Map(
    argv.map(arg => {
      const [key, ...rest] = arg.replace(/^--/, '').split('=');
      return [key, rest.length ? rest.join('=') : 'true'];
    }),
  );
}
