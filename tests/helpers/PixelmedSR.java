// Runs pixelmed's DicomSRValidator over several files in one JVM, so its XSLT templates are
// compiled once (about 20 s) rather than once per file. Used by tests/helpers/validate.py.
//   java -cp pixelmed.jar tests/helpers/PixelmedSR.java FILE...
import com.pixelmed.validate.DicomSRValidator;

public class PixelmedSR {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String file : args) {
            System.out.println("=== FILE " + file);
            System.out.println(validator.validate(file));
        }
    }
}
